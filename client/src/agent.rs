//! The PDC agent's gRPC edge: connect, register, consent, wait for tasks, download, train, upload — and
//! reconnect with exponential back-off whenever the coordinator is unreachable.
//!
//! An upload that breaks off is kept: when the task comes again after the reconnect, the agent asks the
//! coordinator how much it acknowledged (`UploadStatus`), checks the acknowledged prefix's hash against its own
//! bytes, and sends only the rest, without training again.
//!
//! The agent does not trust the coordinator. It remembers the manifest hash it signed for each study
//! ([`ConsentStore`]) and acts on a task only when its study and manifest are those ([`consents`]); it enforces its
//! own consent conditions and budget, charging the spend as training starts; it checks the sizes the coordinator
//! claims against the consented model before allocating; what it reports when it does not deliver is a
//! [`FailureCategory`], with the detail kept in its own log; and nothing the coordinator sends, however large or
//! malformed, ends the process: only its own configuration, key or spend file can.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pdc_ledger::hash::{StreamHasher, f32_bytes, parameters_hash};
use pdc_ledger::signing::{self, ConsentAction, Contribution, PrivacyClaim, StatisticKind, StatisticsRelease};
use pdc_ledger::{Identity, sha3_256};
use pdc_models::Dataset;
use pdc_proto::pb::federation_service_client::FederationServiceClient;
use pdc_proto::{MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES, pb};
use rand::Rng;
use tonic::transport::{Channel, Endpoint};

use crate::config::Compression;
use crate::consents::{self, ConsentRecord, ConsentStore, Refusal};
use crate::spend::SpendStore;
use crate::training::{self, LocalUpdate, StudyTerms};
use crate::{Error, FailureCategory, HospitalConfig, Result};

type Client = FederationServiceClient<Channel>;

/// zstd's level for update chunks: the fastest, since the agent compresses while it sends.
const ZSTD_LEVEL: i32 = 1;
/// How long a resume waits for the coordinator to notice that the broken stream is gone before taking over.
const RESUME_WAIT: Duration = Duration::from_secs(5);

/// A hospital's PDC agent.
pub struct Agent {
    config: HospitalConfig,
    identity: Identity,
    /// Local tables per study, loaded in that study's schema.
    tables: HashMap<String, Dataset>,
    /// Studies this PDC decided not to join, so it says why only once.
    declined: BTreeSet<String>,
    /// The table's privacy spend, when the PDC declared a budget.
    spend: Option<SpendStore>,
    /// What the PDC consented to: the manifest hash it signed per study, and the conditions.
    consents: ConsentStore,
    /// The update whose upload broke off, until it is delivered or its round is over.
    pending: Option<PendingUpload>,
}

/// A signed update on its way: what a resumed upload sends again, without training again.
struct PendingUpload {
    study_id: String,
    round: u32,
    model_hash: String,
    header: pb::UpdateHeader,
    delta: Arc<Vec<f32>>,
    /// Whether an earlier attempt may have left a partial upload on the coordinator.
    interrupted: bool,
}

/// The local data a statistics query releases about, once it is decided to answer.
enum QueryData {
    Features { rows: Vec<Vec<f64>>, bounds: Vec<pdc_privacy::stats::FeatureBounds> },
    Labels(Vec<f64>),
}

/// What a task produced: the update and, under local DP, the signed claim of what it spent.
struct Trained {
    update: LocalUpdate,
    privacy: Option<PrivacyClaim>,
}

/// Replaces the PDC's key: makes a new one next to the key file (`<key_file>.new`, reused if an earlier rotation
/// was interrupted before the coordinator accepted it), has the coordinator record the rotation signed by both
/// keys, then moves the new key over the old one. Returns the new public key.
pub async fn rotate_key(config: &HospitalConfig) -> Result<pdc_ledger::PublicKey> {
    let current = Identity::load_or_create(&config.key_file)?;
    let mut new_path = config.key_file.clone().into_os_string();
    new_path.push(".new");
    let new_path = std::path::PathBuf::from(new_path);
    let next = Identity::load_or_create(&new_path)?;
    let (old_bytes, new_bytes) = (current.public_key().to_bytes(), next.public_key().to_bytes());
    let message = signing::rotate_message(&config.pdc_id, &old_bytes, &new_bytes);
    let request = pb::KeyRotation {
        pdc_id: config.pdc_id.clone(),
        new_public_key: new_bytes.to_vec(),
        old_key_signature: current.sign(&message).to_vec(),
        new_key_signature: next.sign(&message).to_vec(),
    };
    let agent = Agent {
        config: config.clone(),
        identity: current,
        tables: HashMap::new(),
        declined: BTreeSet::new(),
        spend: None,
        consents: ConsentStore::open(&ConsentStore::path_for(&config.key_file))?,
        pending: None,
    };
    let mut client = agent.connect().await?;
    client.rotate_key(request).await.map_err(|s| Error::refused("RotateKey", s))?;
    std::fs::rename(&new_path, &config.key_file).map_err(|e| Error::Config {
        path: config.key_file.clone(),
        detail: format!(
            "the coordinator accepted the new key but it could not replace the old one ({e}); move {} over {} by hand",
            new_path.display(),
            config.key_file.display()
        ),
    })?;
    Ok(next.public_key())
}

impl Agent {
    /// An agent for `config`, loading (or creating) its identity key.
    pub fn new(config: HospitalConfig) -> Result<Self> {
        let identity = Identity::load_or_create(&config.key_file)?;
        let spend = match &config.privacy {
            Some(privacy) => {
                let limit = pdc_privacy::PrivacyBudget::new(privacy.epsilon, privacy.delta)
                    .map_err(|e| Error::Config { path: config.data.clone(), detail: format!("privacy: {e}") })?;
                let path = privacy.spend_file.clone().unwrap_or_else(|| format!("{}.spend.json", config.pdc_id).into());
                Some(SpendStore::open(&path, &privacy.dataset, limit)?)
            }
            None => None,
        };
        let consents = ConsentStore::open(&ConsentStore::path_for(&config.key_file))?;
        Ok(Self { config, identity, tables: HashMap::new(), declined: BTreeSet::new(), spend, consents, pending: None })
    }

    /// The PDC's id.
    pub fn pdc_id(&self) -> &str {
        &self.config.pdc_id
    }

    /// Runs until the agent's own configuration, key or spend file fails it ([`Error::is_fatal`]); reconnects with
    /// exponential back-off and jitter whenever the coordinator is unreachable, the task stream ends, or the
    /// coordinator refuses a call or sends what the agent cannot read (an oversized or malformed response).
    pub async fn run(mut self) -> Result<()> {
        let retry = self.config.retry.clone();
        let mut delay = retry.initial_ms;
        loop {
            match self.session(&mut delay).await {
                Ok(()) => tracing::info!(pdc = %self.config.pdc_id, "task stream ended; reconnecting"),
                Err(error) if error.is_fatal() => return Err(error),
                Err(error) if error.is_transient() => {
                    tracing::warn!(pdc = %self.config.pdc_id, %error, retry_in_ms = delay, "coordinator unavailable");
                }
                Err(error) => {
                    tracing::error!(pdc = %self.config.pdc_id, %error, retry_in_ms = delay, "session failed; retrying");
                }
            }
            let jitter = rand::rng().random_range(0..=delay / 4);
            tokio::time::sleep(Duration::from_millis(delay + jitter)).await;
            delay = (delay * 2).min(retry.max_ms);
        }
    }

    async fn connect(&self) -> Result<Client> {
        let unreachable = |detail: String| Error::Unreachable { endpoint: self.config.coordinator.clone(), detail };
        let mut endpoint = Endpoint::from_shared(self.config.coordinator.clone())
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_secs(3));
        if let Some(tls) = &self.config.tls {
            let config = crate::tls::agent_config(tls, &self.identity)?;
            endpoint = endpoint.tls_config(config).map_err(|e| unreachable(e.to_string()))?;
        }
        let channel = endpoint.connect().await.map_err(|e| unreachable(e.to_string()))?;
        Ok(FederationServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// One connection's life: returns when the task stream ends or a call fails.
    async fn session(&mut self, delay: &mut u64) -> Result<()> {
        let mut client = self.connect().await?;
        self.register(&mut client).await?;
        self.declare_budget(&mut client).await?;
        *delay = self.config.retry.initial_ms;
        // The task stream opens before the first consent: a round opens for the PDCs that have consented *and*
        // hold a stream, so a consent sent first could miss a round that opens in between.
        let request = self.signed("WaitTasks");
        let mut tasks = client.wait_tasks(request).await.map_err(|s| Error::refused("WaitTasks", s))?.into_inner();
        tracing::info!(pdc = %self.config.pdc_id, "waiting for tasks");
        let retry = self.config.retry.clone();
        let mut poll = tokio::time::interval(Duration::from_millis(retry.poll_ms));
        // A consent pass the coordinator answers with something unreadable (a study list above the message limit,
        // say) is logged and tried again later, backing off, while the task stream goes on serving the studies
        // already consented to.
        let (mut pass_delay, mut next_pass) = (retry.poll_ms, tokio::time::Instant::now());
        loop {
            tokio::select! {
                message = tasks.message() => match message {
                    Ok(Some(task)) => self.handle_task(&mut client, task).await?,
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(Error::refused("WaitTasks", status)),
                },
                _ = poll.tick() => {
                    if tokio::time::Instant::now() < next_pass {
                        continue;
                    }
                    match self.consent_pass(&mut client).await {
                        Ok(()) => pass_delay = retry.poll_ms,
                        Err(error) if error.is_transient() || error.is_fatal() => return Err(error),
                        Err(error) => {
                            tracing::error!(pdc = %self.config.pdc_id, %error, retry_in_ms = pass_delay,
                                "consent pass failed");
                            next_pass = tokio::time::Instant::now() + Duration::from_millis(pass_delay);
                            pass_delay = (pass_delay * 2).min(retry.max_ms.max(retry.poll_ms));
                        }
                    }
                }
            }
        }
    }

    async fn register(&self, client: &mut Client) -> Result<()> {
        let public_key = self.identity.public_key().to_bytes();
        let signature = self.identity.sign(&signing::register_message(&self.config.pdc_id, &public_key));
        let request = pb::RegisterRequest {
            pdc_id: self.config.pdc_id.clone(),
            public_key: public_key.to_vec(),
            signature: signature.to_vec(),
        };
        client.register(request).await.map_err(|s| Error::refused("Register", s))?;
        Ok(())
    }

    /// Declares the table's privacy budget, if the PDC has one (again on every connection: the same declaration
    /// changes nothing).
    async fn declare_budget(&self, client: &mut Client) -> Result<()> {
        let Some(spend) = &self.spend else { return Ok(()) };
        let (dataset, limit) = (spend.dataset(), spend.limit());
        let message = signing::budget_message(&self.config.pdc_id, dataset, limit.epsilon(), limit.delta());
        let request = pb::BudgetDeclaration {
            pdc_id: self.config.pdc_id.clone(),
            dataset: dataset.to_owned(),
            epsilon: limit.epsilon(),
            delta: limit.delta(),
            signature: self.identity.sign(&message).to_vec(),
        };
        client.declare_budget(request).await.map_err(|s| Error::refused("DeclareBudget", s))?;
        Ok(())
    }

    fn signed(&self, method: &str) -> pb::SignedRequest {
        let timestamp_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        // Fresh for every request, from the thread's CSPRNG: the coordinator refuses a nonce it has seen.
        let nonce: [u8; 16] = rand::random();
        let message = signing::request_message(method, &self.config.pdc_id, timestamp_ms, &nonce);
        let signature = self.identity.sign(&message).to_vec();
        pb::SignedRequest { pdc_id: self.config.pdc_id.clone(), timestamp_ms, signature, nonce: nonce.to_vec() }
    }

    /// Consents to every listed study the policy allows and the local table can serve, and remembers the manifest
    /// hash it signed. A study the coordinator lists as consented that this PDC has no record of (a consent given
    /// before the PDC kept its consent file) is decided again from the listed text, and recorded only if the
    /// policy would consent to it now.
    async fn consent_pass(&mut self, client: &mut Client) -> Result<()> {
        let listing = client
            .list_studies(self.signed("ListStudies"))
            .await
            .map_err(|s| Error::refused("ListStudies", s))?
            .into_inner();
        for study in listing.studies {
            if self.declined.contains(&study.study_id) {
                continue;
            }
            // The PDC signs the hash of the text it read, never a hash it was told.
            let manifest_hash = sha3_256(study.manifest_toml.as_bytes());
            if hex::encode(manifest_hash) != study.manifest_hash {
                self.decline(&study.study_id, "the listed manifest hash does not match its text");
                continue;
            }
            if let Some(record) = self.consents.get(&study.study_id) {
                if record.manifest_hash != manifest_hash {
                    // The consent stands for the text signed; tasks carrying this one will be refused.
                    self.decline(&study.study_id, "the listed manifest is not the one this PDC consented to");
                    continue;
                }
                if study.consented {
                    continue;
                }
            }
            let conditions = match self.evaluate(&study, manifest_hash) {
                Ok(conditions) => conditions,
                Err(reason) => {
                    self.decline(&study.study_id, &reason);
                    continue;
                }
            };
            let record = ConsentRecord { manifest_hash, conditions: conditions.unwrap_or_default() };
            if study.consented {
                self.consents.record(&study.study_id, record)?;
                tracing::info!(pdc = %self.config.pdc_id, study = %study.study_id, "consent recovered from the listing");
                continue;
            }
            let message = match &conditions {
                Some(conditions) => signing::conditional_consent_message(&study.study_id, &manifest_hash, conditions),
                None => signing::consent_message(ConsentAction::Grant, &study.study_id, &manifest_hash),
            };
            let request = pb::ConsentRequest {
                pdc_id: self.config.pdc_id.clone(),
                study_id: study.study_id.clone(),
                signature: self.identity.sign(&message).to_vec(),
                conditions: conditions.map(|c| pb::ConsentConditions {
                    max_rounds: c.max_rounds,
                    max_epsilon: c.max_epsilon,
                    expires_at_ms: c.expires_at_ms,
                }),
            };
            // On disk before the signature leaves: a task for this study is checked against it from now on.
            self.consents.record(&study.study_id, record)?;
            client.consent(request).await.map_err(|s| Error::refused("Consent", s))?;
            tracing::info!(pdc = %self.config.pdc_id, study = %study.study_id, "consented");
        }
        Ok(())
    }

    /// Whether this PDC consents to `study` (whose text hashes to `manifest_hash`), and with which conditions; an
    /// error says why not, for the local log.
    fn evaluate(
        &mut self,
        study: &pb::StudyListing,
        manifest_hash: pdc_ledger::Hash,
    ) -> std::result::Result<Option<signing::ConsentConditions>, String> {
        let terms = StudyTerms::parse(&study.manifest_toml).map_err(|e| format!("unreadable manifest: {e}"))?;
        let model_kind = match &terms.model {
            pdc_models::ModelKind::LogisticRegression => "logistic_regression",
            pdc_models::ModelKind::Mlp { .. } => "mlp",
        };
        let offer = crate::config::StudyOffer {
            name: &terms.name,
            model_kind,
            target_epsilon: terms.privacy.as_ref().and_then(|privacy| privacy.target_epsilon),
            local_dp: terms.privacy.is_some(),
            budget_declared: self.spend.is_some(),
            manifest_hash,
            researcher: (!study.researcher_id.is_empty())
                .then_some((study.researcher_id.as_str(), study.manifest_signature.as_slice())),
        };
        let conditions = self.config.consent.decide(&offer, now_ms())?;
        self.table(&study.study_id, &terms).map_err(|error| format!("local data does not fit: {error}"))?;
        Ok(conditions)
    }

    fn decline(&mut self, study_id: &str, reason: &str) {
        tracing::info!(pdc = %self.config.pdc_id, study = %study_id, %reason, "not joining study");
        self.declined.insert(study_id.to_owned());
    }

    /// The local table in `terms`' schema, loaded once per study: only the columns the study names are parsed,
    /// and a binary task's labels must be 0 or 1. Any failure is a [`FailureCategory::LocalData`] refusal whose
    /// detail (it may name a line, a column or a cell) stays in the local log.
    fn table(&mut self, study_id: &str, terms: &StudyTerms) -> Result<&Dataset> {
        if !self.tables.contains_key(study_id) {
            let local = |error: pdc_models::Error| {
                Refusal::new(FailureCategory::LocalData, error.to_string()).into_error(study_id, 0)
            };
            let table = pdc_models::load_csv(&self.config.data, &terms.schema()).map_err(local)?;
            if terms.data.task == pdc_models::Task::BinaryClassification {
                table.check_binary_labels().map_err(local)?;
            }
            self.tables.insert(study_id.to_owned(), table);
        }
        Ok(&self.tables[study_id])
    }

    async fn handle_task(&mut self, client: &mut Client, task: pb::Task) -> Result<()> {
        let (study_id, round) = (task.study_id.clone(), task.round);
        tracing::info!(pdc = %self.config.pdc_id, study = %study_id, round, "task received");
        if let Some(query) = &task.query {
            return self.answer_query(client, &task, query).await;
        }
        if self.config.simulate.crash_at_round == Some(round) {
            tracing::error!(pdc = %self.config.pdc_id, round, "simulated crash");
            std::process::abort();
        }
        let resumable = |pending: &mut PendingUpload| {
            pending.study_id == task.study_id && pending.round == round && pending.model_hash == task.model_hash
        };
        if let Some(pending) = self.pending.take_if(resumable) {
            tracing::info!(pdc = %self.config.pdc_id, study = %study_id, round, "resuming the upload");
            return self.send_update(client, pending).await;
        }
        if self.pending.as_ref().is_some_and(|pending| pending.study_id == task.study_id) {
            // Its round is over: the coordinator has deleted what it had of it.
            self.pending = None;
        }
        match self.train_task(client, &task).await {
            Ok(trained) => self.upload(client, &task, trained).await,
            Err(error) if error.is_transient() => Err(error),
            Err(error) => {
                tracing::warn!(pdc = %self.config.pdc_id, study = %study_id, round, %error, "task failed");
                self.report_failure(client, study_id, round, &error).await;
                Ok(())
            }
        }
    }

    /// Tells the coordinator that this PDC will not deliver for `scope`'s `round` (0: a statistics query) because
    /// of `error`, as its fixed category: the error's text, which may quote the local table, stays in the log.
    async fn report_failure(&self, client: &mut Client, scope: String, round: u32, error: &Error) {
        let category = error.category();
        let (kind, reason) = match (error, &self.spend) {
            // A policy decline's detail is made of the hospital's own settings and the query alone (no feasibility
            // queries, a per-query cap), so the researcher may learn why.
            (Error::Declined { detail, .. }, _) => (pb::FailureKind::Unspecified, format!("{category}: {detail}")),
            // The declared budget is on the ledger already; the round's figures, which depend on the table's
            // size, are not repeated.
            (Error::BudgetExhausted { .. }, Some(spend)) => (
                pb::FailureKind::BudgetExhausted,
                format!(
                    "{category}: the release would take the table beyond its budget of {}",
                    spend.limit().epsilon()
                ),
            ),
            _ => (pb::FailureKind::Unspecified, category.as_str().to_owned()),
        };
        let report = pb::FailureReport {
            study_id: scope,
            round,
            reason,
            auth: Some(self.signed("ReportFailure")),
            kind: kind as i32,
        };
        if let Err(status) = client.report_failure(report).await {
            tracing::warn!(pdc = %self.config.pdc_id, %status, "failure report refused");
        }
    }

    /// Answers a statistics query with a signed DP release charged to the table's budget, or declines it (a
    /// failure report for the query's scope at round 0) saying why.
    async fn answer_query(&mut self, client: &mut Client, task: &pb::Task, query: &pb::StatisticsQuery) -> Result<()> {
        let scope = task.study_id.clone();
        let failure = match self.release(task, query) {
            Ok(submission) => match client.submit_statistics(submission).await {
                Ok(receipt) => {
                    tracing::info!(pdc = %self.config.pdc_id, %scope, answers = receipt.into_inner().answers,
                        "statistics released");
                    return Ok(());
                }
                Err(status) => {
                    let error = Error::refused("SubmitStatistics", status);
                    if error.is_transient() {
                        return Err(error);
                    }
                    // Refused (the query closed, say): the spend stands, and there is nothing to retry.
                    tracing::warn!(pdc = %self.config.pdc_id, %scope, %error, "statistics refused");
                    return Ok(());
                }
            },
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => error,
        };
        tracing::info!(pdc = %self.config.pdc_id, %scope, reason = %failure, "statistics query declined");
        self.report_failure(client, scope, 0, &failure).await;
        Ok(())
    }

    /// Decides whether to answer `query`, charges its release to the spend file (on disk before anything is
    /// computed or sent) and returns the signed release.
    fn release(&mut self, task: &pb::Task, query: &pb::StatisticsQuery) -> Result<pb::StatisticsSubmission> {
        let scope = task.study_id.clone();
        let declined = |detail: String| Error::Declined { scope: scope.clone(), detail };
        let bad = |detail: String| Error::BadTask { study_id: scope.clone(), round: 0, detail };
        let Some(spend) = &self.spend else {
            return Err(declined("this PDC declared no privacy budget, so it releases no statistics".into()));
        };
        if spend.events().iter().any(|event| event.study_id == scope && event.round == 0) {
            return Err(declined("this PDC already released statistics for it; it releases once per query".into()));
        }
        let noise_multiplier = query.noise_multiplier;
        if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
            return Err(bad(format!("noise multiplier {noise_multiplier} is not finite and positive")));
        }
        let kind = match pb::StatisticKind::try_from(query.kind) {
            Ok(pb::StatisticKind::FeatureSummary) => StatisticKind::FeatureSummary,
            Ok(pb::StatisticKind::CohortCounts) => StatisticKind::CohortCounts,
            _ => return Err(bad(format!("unknown statistic kind {}", query.kind))),
        };
        // What to release, decided and checked before anything is spent.
        let data = match kind {
            StatisticKind::FeatureSummary => {
                // A study's statistics are released only for a study this PDC consented to, under the manifest
                // it signed, and within the consent's ε.
                let record = self.consents.get(&scope).copied();
                let terms = consents::check_manifest(record.as_ref(), &task.manifest_toml)
                    .map_err(|refusal| refusal.into_error(&scope, 0))?;
                let record = record.expect("check_manifest refuses a study without consent");
                let with_release =
                    spend.study_epsilon(&scope, (1.0, noise_multiplier, 1), spend.limit().delta(), false)?;
                consents::check_epsilon(&record.conditions, with_release, None, None)
                    .map_err(|refusal| refusal.into_error(&scope, 0))?;
                let settings = terms
                    .federated_standardization
                    .as_ref()
                    .ok_or_else(|| bad("the study's manifest asks for no federated standardisation".into()))?;
                let bounds = settings.bounds_for(&terms.data.features)?;
                // The manifest this PDC consented to sets the noise and the bounds; a query asking for less noise
                // or other bounds is refused.
                let asked: Vec<(f64, f64)> = query.bounds.iter().map(|b| (b.lower, b.upper)).collect();
                let agreed: Vec<(f64, f64)> = bounds.iter().map(|b| (b.lower(), b.upper())).collect();
                if settings.noise_multiplier()? != noise_multiplier || asked != agreed {
                    return Err(bad("the query's noise or bounds are not the ones the manifest states".into()));
                }
                let table = self.table(&scope, &terms)?;
                let rows: Vec<Vec<f64>> = table
                    .features
                    .chunks_exact(table.n_features())
                    .map(|row| row.iter().map(|&v| f64::from(v)).collect())
                    .collect();
                QueryData::Features { rows, bounds }
            }
            StatisticKind::CohortCounts => {
                let privacy = self.config.privacy.as_ref().expect("a spend store comes from [privacy]");
                let Some(cap) = privacy.feasibility_epsilon else {
                    return Err(declined(
                        "this hospital answers no feasibility queries (privacy.feasibility_epsilon is not set)".into(),
                    ));
                };
                let mut alone = pdc_privacy::RdpAccountant::new();
                pdc_privacy::Accountant::compose_gaussian(&mut alone, noise_multiplier, 1);
                let cost = pdc_privacy::Accountant::epsilon(&alone, spend.limit().delta())
                    .map_err(|e| bad(format!("cannot account the query: {e}")))?;
                if cost > cap {
                    return Err(declined(format!(
                        "the query would cost ε = {cost:.4}, above this hospital's cap of {cap} per query"
                    )));
                }
                // Only the label column is read, and it must be binary, before anything is spent.
                let refuse = |detail: String| Refusal::new(FailureCategory::LocalData, detail).into_error(&scope, 0);
                let labels = pdc_models::Dataset::load_column(&self.config.data, &query.label)
                    .map_err(|e| refuse(e.to_string()))?;
                if let Some(row) = labels.iter().position(|&y| y != 0.0 && y != 1.0) {
                    return Err(refuse(format!("the label column's row {row} is neither 0 nor 1")));
                }
                QueryData::Labels(labels.iter().map(|&y| f64::from(y)).collect())
            }
        };
        let spend = self.spend.as_mut().expect("checked above");
        if let Err(unaffordable) = spend.plan(1.0, noise_multiplier, 1)? {
            return Err(Error::BudgetExhausted { study_id: scope.clone(), round: 0, detail: unaffordable.to_string() });
        }
        let epsilon = spend.commit(&scope, 0, 1.0, noise_multiplier, 1)?;
        let privacy_error = |e: pdc_privacy::Error| Error::Model(pdc_models::Error::from(e));
        let values = match data {
            QueryData::Features { rows, bounds } => {
                pdc_privacy::stats::release_feature_summary(&rows, &bounds, noise_multiplier)
                    .map_err(privacy_error)?
                    .values()
            }
            QueryData::Labels(labels) => {
                let counts =
                    pdc_privacy::stats::release_cohort_counts(&labels, noise_multiplier).map_err(privacy_error)?;
                vec![counts.positives, counts.negatives]
            }
        };
        let release = StatisticsRelease {
            scope,
            pdc_id: self.config.pdc_id.clone(),
            kind,
            dataset: spend.dataset().to_owned(),
            noise_multiplier,
            values,
            epsilon,
            delta: spend.limit().delta(),
        };
        let signature = self.identity.sign(&release.signing_bytes());
        Ok(pb::StatisticsSubmission {
            scope: release.scope,
            pdc_id: release.pdc_id,
            kind: query.kind,
            dataset: release.dataset,
            noise_multiplier,
            values: release.values,
            epsilon,
            delta: release.delta,
            signature: signature.to_vec(),
        })
    }

    /// Trains for `task`, after checking it against what this PDC consented to: the study and its manifest, the
    /// round, the sizes the coordinator claims, the local table, and (under local DP) the budget and the study's
    /// ε. The spend is charged as training starts, so a DP-SGD run that aborts is paid for.
    async fn train_task(&mut self, client: &mut Client, task: &pb::Task) -> Result<Trained> {
        let (study_id, round) = (task.study_id.as_str(), task.round);
        let refuse = |refusal: Refusal| refusal.into_error(study_id, round);
        let record = self.consents.get(study_id).copied();
        let terms = consents::check_manifest(record.as_ref(), &task.manifest_toml).map_err(refuse)?;
        let record = record.expect("check_manifest refuses a study without consent");
        consents::check_round(&record, &terms, round, now_ms()).map_err(refuse)?;
        if terms.privacy.is_none() && self.spend.is_some() && !self.config.consent.allow_non_private {
            // The policy changed since the consent: DP fails closed.
            return Err(refuse(Refusal::new(
                FailureCategory::OutsideConsent,
                "the study trains without local DP and this PDC's policy no longer allows it",
            )));
        }
        // Sizes the coordinator claims are the consented model's, before anything is allocated for them.
        let n_parameters = terms.model_spec().layout().n_parameters() as u64;
        if task.n_parameters != n_parameters {
            return Err(refuse(Refusal::new(
                FailureCategory::InvalidTask,
                format!("the task claims {} parameters; the consented model has {n_parameters}", task.n_parameters),
            )));
        }
        let standardizer = training::standardizer(
            study_id,
            round,
            terms.data.features.len(),
            task.feature_mean.clone(),
            task.feature_std.clone(),
        )?;
        let table = self.table(study_id, &terms)?.clone();
        let Some(dp) = training::dp_config(&terms, table.n_rows())? else {
            let global = self.download(client, task, n_parameters).await?;
            let (seed, attack) = (task.training_seed, self.config.attack.clone());
            let central = terms.central_privacy.is_some();
            let mut update = tokio::task::spawn_blocking(move || match attack {
                Some(attack) => {
                    training::train_round_attacked(&terms, &global, &table, &standardizer, seed, &attack, None)
                }
                None => training::train_round(&terms, &global, &table, &standardizer, seed),
            })
            .await
            .map_err(|e| Error::BadTask {
                study_id: study_id.to_owned(),
                round,
                detail: format!("training panicked: {e}"),
            })??;
            if central {
                // The ledger is read by every auditor, and the exact loss on this table is outside the study's
                // central ε: the coordinator refuses an update that carries one.
                update.train_loss = 0.0;
            }
            return Ok(Trained { update, privacy: None });
        };
        if self.config.attack.is_some() {
            return Err(Error::Attack("attack simulation runs only in studies without local DP".into()));
        }
        let Some(spend) = self.spend.as_ref() else {
            return Err(refuse(Refusal::new(
                FailureCategory::OutsideConsent,
                "the study trains with local DP and this PDC declared no budget",
            )));
        };
        let privacy = terms.privacy.as_ref().expect("a DP configuration comes from [privacy]");
        let release = (dp.sampling_rate(table.n_rows()), dp.noise_multiplier, dp.steps(table.n_rows()));
        // Refuse before downloading anything: the round would take the table past its budget, or the study past
        // the consent's ε or its own target.
        if let Err(unaffordable) = spend.plan(release.0, release.1, release.2)? {
            return Err(Error::BudgetExhausted {
                study_id: study_id.to_owned(),
                round,
                detail: unaffordable.to_string(),
            });
        }
        let with_release = spend.study_epsilon(study_id, release, spend.limit().delta(), false)?;
        let training = spend.study_epsilon(study_id, release, privacy.delta, true)?;
        consents::check_epsilon(&record.conditions, with_release, privacy.target_epsilon, Some(training))
            .map_err(refuse)?;
        let global = self.download(client, task, n_parameters).await?;
        // Charged as training starts, on disk before it: a run that aborts (divergence, a non-finite gradient)
        // has touched the rows, and is paid for.
        let spend = self.spend.as_mut().expect("checked above");
        let epsilon = spend.commit(study_id, round, release.0, release.1, release.2)?;
        let (delta, dataset) = (spend.limit().delta(), spend.dataset().to_owned());
        let trained = tokio::task::spawn_blocking(move || {
            training::train_round_private(&terms, &global, &table, &standardizer, &dp)
        })
        .await
        .map_err(|e| Error::BadTask {
            study_id: study_id.to_owned(),
            round,
            detail: format!("training panicked: {e}"),
        })?;
        let private = match trained {
            Ok(private) => private,
            Err(error) => {
                tracing::warn!(pdc = %self.config.pdc_id, study = %study_id, round, epsilon, %error,
                    "DP-SGD aborted; its spend stands");
                return Err(error);
            }
        };
        if (private.sampling_rate, private.config.noise_multiplier, private.steps) != release {
            return Err(Error::Spend {
                path: self.config.privacy.as_ref().and_then(|p| p.spend_file.clone()).unwrap_or_default(),
                detail: format!(
                    "training ran (q, σ, steps) = ({}, {}, {}), not the charged {release:?}",
                    private.sampling_rate, private.config.noise_multiplier, private.steps
                ),
            });
        }
        tracing::info!(pdc = %self.config.pdc_id, study = %study_id, round, epsilon, study_epsilon = with_release,
            noise_multiplier = private.config.noise_multiplier, steps = private.steps,
            local_loss = private.local_loss, "trained with DP-SGD");
        let claim = PrivacyClaim {
            dataset,
            noise_multiplier: private.config.noise_multiplier,
            sampling_rate: private.sampling_rate,
            steps: private.steps,
            clip_norm: private.config.clip_norm,
            epsilon,
            delta,
        };
        Ok(Trained { update: private.update, privacy: Some(claim) })
    }

    /// Downloads the task's model: `n_parameters` values (the consented model's, which the task was checked to
    /// claim) whose hash is the task's, refused chunk by chunk as soon as a chunk does not fit.
    async fn download(&self, client: &mut Client, task: &pb::Task, n_parameters: u64) -> Result<Vec<f32>> {
        let bad = |detail: String| Error::BadTask { study_id: task.study_id.clone(), round: task.round, detail };
        let request = pb::ModelRequest {
            study_id: task.study_id.clone(),
            round: task.round,
            auth: Some(self.signed("DownloadGlobalModel")),
            compression: compression_to_pb(self.config.compression) as i32,
        };
        let mut parts = client
            .download_global_model(request)
            .await
            .map_err(|s| Error::refused("DownloadGlobalModel", s))?
            .into_inner();
        let header = match parts.message().await.map_err(|s| Error::refused("DownloadGlobalModel", s))? {
            Some(pb::ModelPart { part: Some(pb::model_part::Part::Header(header)) }) => header,
            _ => return Err(bad("the model stream does not start with a header".into())),
        };
        if header.n_parameters != n_parameters || header.model_hash != task.model_hash {
            return Err(bad("the model offered is not the one the task names".into()));
        }
        let compression = pb::Compression::try_from(header.compression)
            .map_err(|_| bad(format!("unknown compression {}", header.compression)))?;
        let expected_bytes = header.n_parameters.saturating_mul(4);
        let n_parameters = usize::try_from(header.n_parameters).map_err(|_| bad("model too large".into()))?;
        // The model is decoded chunk by chunk: it is held once, as values.
        let mut values = Vec::with_capacity(n_parameters);
        let mut received = 0u64;
        let mut hasher = StreamHasher::new();
        let mut buffer = Vec::new();
        while let Some(part) = parts.message().await.map_err(|s| Error::refused("DownloadGlobalModel", s))? {
            let Some(pb::model_part::Part::Chunk(chunk)) = part.part else {
                return Err(bad("a model stream has one header, then only chunks".into()));
            };
            // A raw chunk is at most 1 MiB; a zstd frame is bounded by the message limit and decompresses into at
            // most a chunk, below.
            if compression == pb::Compression::None && chunk.data.len() > MAX_CHUNK_BYTES {
                return Err(bad(format!(
                    "a model chunk of {} bytes is above the {MAX_CHUNK_BYTES} allowed",
                    chunk.data.len()
                )));
            }
            let data = match compression {
                pb::Compression::None => chunk.data.as_slice(),
                pb::Compression::Zstd => {
                    // Never more than a chunk, nor past the model's end, whatever the frame claims.
                    let limit = (expected_bytes - received).min(MAX_CHUNK_BYTES as u64) as usize;
                    buffer.resize(limit, 0);
                    let size = zstd::bulk::decompress_to_buffer(&chunk.data, buffer.as_mut_slice())
                        .map_err(|e| bad(format!("model chunk at offset {}: {e}", chunk.offset)))?;
                    &buffer[..size]
                }
            };
            if chunk.offset != received
                || received + data.len() as u64 > expected_bytes
                || !data.len().is_multiple_of(4)
            {
                return Err(bad(format!("model chunk at offset {} does not fit", chunk.offset)));
            }
            hasher.update(data);
            values.extend(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            received += data.len() as u64;
        }
        if received != expected_bytes || hex::encode(hasher.finish()) != task.model_hash {
            return Err(bad("the downloaded model is incomplete or does not match its hash".into()));
        }
        Ok(values)
    }

    async fn upload(&mut self, client: &mut Client, task: &pb::Task, trained: Trained) -> Result<()> {
        let Trained { update, privacy } = trained;
        let contribution = Contribution {
            study_id: task.study_id.clone(),
            round: task.round,
            pdc_id: self.config.pdc_id.clone(),
            n_examples: update.n_examples,
            n_parameters: update.delta.len() as u64,
            update_hash: parameters_hash(&update.delta),
            train_loss: update.train_loss,
            privacy,
        };
        let signature = self.identity.sign(&contribution.signing_bytes());
        let header = update_header(&contribution, &signature, compression_to_pb(self.config.compression));
        let pending = PendingUpload {
            study_id: task.study_id.clone(),
            round: task.round,
            model_hash: task.model_hash.clone(),
            header,
            delta: Arc::new(update.delta),
            interrupted: false,
        };
        self.send_update(client, pending).await
    }

    /// Sends `pending`, resuming from what the coordinator acknowledged when an earlier attempt broke off. A
    /// transient failure keeps it for the next attempt; a refusal is final for the round.
    async fn send_update(&mut self, client: &mut Client, mut pending: PendingUpload) -> Result<()> {
        let (study_id, round) = (pending.study_id.clone(), pending.round);
        let start = if pending.interrupted {
            match self.acknowledged(client, &pending).await {
                Ok(Some(start)) => start,
                Ok(None) => return Ok(()),
                Err(error) if error.is_transient() => {
                    self.pending = Some(pending);
                    return Err(error);
                }
                Err(error) => {
                    tracing::warn!(pdc = %self.config.pdc_id, study = %study_id, round, %error, "upload not resumed");
                    return Ok(());
                }
            }
        } else {
            0
        };
        pending.header.resume_offset = start;
        let stream = self.chunk_stream(&pending, start);
        match client.submit_update(stream).await {
            Ok(receipt) => {
                let receipt = receipt.into_inner();
                tracing::info!(pdc = %self.config.pdc_id, study = %study_id, round, resumed_at = start,
                    update = %receipt.update_id, "update accepted");
                Ok(())
            }
            Err(status) => {
                let error = Error::refused("SubmitUpdate", status);
                if error.is_transient() {
                    pending.interrupted = true;
                    self.pending = Some(pending);
                    return Err(error);
                }
                // A refused update (late, invalid) is final for this round; the agent goes on with the next task.
                tracing::warn!(pdc = %self.config.pdc_id, study = %study_id, round, %error, "update refused");
                Ok(())
            }
        }
    }

    /// Where to resume `pending`: the coordinator's acknowledged length when its hash matches these bytes' prefix,
    /// else 0. `None` when there is nothing to send: the coordinator has the update already.
    async fn acknowledged(&self, client: &mut Client, pending: &PendingUpload) -> Result<Option<u64>> {
        let waited = tokio::time::Instant::now();
        loop {
            let request = pb::UploadStatusRequest {
                study_id: pending.study_id.clone(),
                round: pending.round,
                update_hash: pending.header.update_hash.clone(),
                auth: Some(self.signed("UploadStatus")),
            };
            let status = match client.upload_status(request).await {
                Ok(status) => status.into_inner(),
                Err(status) if status.code() == tonic::Code::AlreadyExists => {
                    tracing::info!(pdc = %self.config.pdc_id, study = %pending.study_id, round = pending.round,
                        "the coordinator has the update already");
                    return Ok(None);
                }
                Err(status) => return Err(Error::refused("UploadStatus", status)),
            };
            // The old stream may still be open on the coordinator's side: give the break time to reach it, so that
            // what it acknowledges is final; after that, the resume takes over from it.
            if status.receiving && waited.elapsed() < RESUME_WAIT {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let acknowledged = status.acknowledged_bytes;
            let total = pending.delta.len() as u64 * 4;
            if acknowledged == 0 || acknowledged > total || !acknowledged.is_multiple_of(4) {
                return Ok(Some(0));
            }
            let ours = parameters_hash(&pending.delta[..(acknowledged / 4) as usize]);
            if status.running_hash != ours {
                tracing::warn!(pdc = %self.config.pdc_id, acknowledged, "the acknowledged prefix is not ours; starting over");
                return Ok(Some(0));
            }
            tracing::info!(pdc = %self.config.pdc_id, acknowledged, total, "resuming after the acknowledged bytes");
            return Ok(Some(acknowledged));
        }
    }

    /// The header, then the chunks from byte `start` on, each with the running hash of everything up to its end.
    /// Chunks are encoded one at a time as tonic sends them, so an upload never holds a second copy of the model.
    fn chunk_stream(&self, pending: &PendingUpload, start: u64) -> impl futures::Stream<Item = pb::UpdatePart> + use<> {
        let header = pb::UpdatePart { part: Some(pb::update_part::Part::Header(pending.header.clone())) };
        // A hospital simulating a crash mid-upload dies once this many bytes of the update are on their way.
        let crash_after = self.config.attack.as_ref().and_then(|attack| attack.crash_after_bytes());
        let compression = self.config.compression;
        let values_per_chunk = MAX_CHUNK_BYTES / 4;
        let delta = Arc::clone(&pending.delta);
        let first = (start / 4) as usize;
        let mut hasher = StreamHasher::new();
        for block in delta[..first].chunks(values_per_chunk) {
            hasher.update(&f32_bytes(block));
        }
        let starts = (first..delta.len()).step_by(values_per_chunk);
        let chunks = starts.map(move |begin| {
            let end = (begin + values_per_chunk).min(delta.len());
            if crash_after.is_some_and(|limit| (begin * 4) as u64 >= limit) {
                tracing::error!(bytes_sent = begin * 4, "simulated crash mid-upload");
                std::process::abort();
            }
            let bytes = f32_bytes(&delta[begin..end]);
            hasher.update(&bytes);
            let running_hash = hasher.clone().finish().to_vec();
            let data = match compression {
                Compression::None => bytes,
                // Compressing a chunk of memory cannot fail short of running out of it.
                Compression::Zstd => zstd::bulk::compress(&bytes, ZSTD_LEVEL).expect("zstd compresses a chunk"),
            };
            pb::UpdatePart {
                part: Some(pb::update_part::Part::Chunk(pb::Chunk { offset: (begin * 4) as u64, data, running_hash })),
            }
        });
        futures::stream::iter(std::iter::once(header).chain(chunks))
    }
}

/// The wall clock in Unix milliseconds (0 before 1970), for consent expiry.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The header of a fresh upload of `contribution`, with the PDC's `signature` over its signing bytes, its chunks
/// sent with `compression`.
pub fn update_header(contribution: &Contribution, signature: &[u8], compression: pb::Compression) -> pb::UpdateHeader {
    pb::UpdateHeader {
        study_id: contribution.study_id.clone(),
        round: contribution.round,
        pdc_id: contribution.pdc_id.clone(),
        n_examples: contribution.n_examples,
        n_parameters: contribution.n_parameters,
        update_hash: contribution.update_hash.to_vec(),
        train_loss: contribution.train_loss,
        signature: signature.to_vec(),
        privacy: contribution.privacy.as_ref().map(|claim| pb::PrivacyClaim {
            dataset: claim.dataset.clone(),
            noise_multiplier: claim.noise_multiplier,
            sampling_rate: claim.sampling_rate,
            steps: claim.steps,
            clip_norm: claim.clip_norm,
            epsilon: claim.epsilon,
            delta: claim.delta,
        }),
        resume_offset: 0,
        compression: compression as i32,
    }
}

fn compression_to_pb(compression: Compression) -> pb::Compression {
    match compression {
        Compression::None => pb::Compression::None,
        Compression::Zstd => pb::Compression::Zstd,
    }
}
