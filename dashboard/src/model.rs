//! The dashboard's views of a ledger, folded from its decoded entries: pure functions of the entries and the
//! checkpoints' times, with no I/O, so that every page and its JSON twin show the same figures.

use std::collections::{BTreeMap, BTreeSet};

use pdc_ledger::PublicKey;
use pdc_ledger::entry::Entry;
use pdc_ledger::signing::StatisticKind;
use serde::Serialize;

/// A decoded entry with its index in the log.
pub type Indexed = (u64, Entry);

/// The times at which entries were sealed: each checkpoint's size and timestamp, in increasing size order. Entries
/// carry no time of their own; the first checkpoint that covers an entry says by when it was recorded.
#[derive(Clone, Debug, Default)]
pub struct Seals(Vec<(u64, u64)>);

impl Seals {
    /// Seals from `(size, timestamp_ms)` pairs in any order.
    pub fn new(mut checkpoints: Vec<(u64, u64)>) -> Self {
        checkpoints.sort_unstable();
        Seals(checkpoints)
    }

    /// The timestamp of the first checkpoint that covers entry `index`, if one does.
    pub fn sealed_at(&self, index: u64) -> Option<u64> {
        let position = self.0.partition_point(|&(size, _)| size <= index);
        self.0.get(position).map(|&(_, timestamp)| timestamp)
    }
}

/// What a field of an entry holds, which says how a page shows it and links it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// Free text.
    Text,
    /// A number.
    Number,
    /// A SHA3-256 hash, hex.
    Hash,
    /// An Ed25519 public key, hex.
    Key,
    /// An Ed25519 signature, hex.
    Signature,
    /// A study id (links to the study).
    Study,
    /// A party's id (links to the hospitals page).
    Party,
    /// A round number.
    Round,
}

/// One decoded field of an entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Field {
    /// The field's name, as in [`Entry`].
    pub name: String,
    /// Its value, as text.
    pub value: String,
    /// What it holds.
    pub kind: FieldKind,
}

/// Every field of `entry`, in declaration order (nested structures flattened with dotted names).
pub fn fields(entry: &Entry) -> Vec<Field> {
    let mut out = Fields(Vec::new());
    match entry {
        Entry::MemberRegistered { pdc_id, role, public_key } => {
            out.party("pdc_id", pdc_id);
            out.text("role", role.name());
            out.push("public_key", hex::encode(public_key), FieldKind::Key);
        }
        Entry::KeyRotated { pdc_id, old_key, new_key, signature } => {
            out.party("pdc_id", pdc_id);
            out.push("old_key", hex::encode(old_key), FieldKind::Key);
            out.push("new_key", hex::encode(new_key), FieldKind::Key);
            out.push("signature", hex::encode(signature), FieldKind::Signature);
        }
        Entry::StudyCreated { study_id, manifest_hash } => {
            out.study(study_id);
            out.hash("manifest_hash", manifest_hash);
        }
        Entry::ConsentGranted { study_id, pdc_id, manifest_hash, signature, conditions } => {
            out.study(study_id);
            out.party("pdc_id", pdc_id);
            out.hash("manifest_hash", manifest_hash);
            out.push("signature", hex::encode(signature), FieldKind::Signature);
            match conditions {
                None => out.text("conditions", "none"),
                Some(conditions) => {
                    if let Some(rounds) = conditions.max_rounds {
                        out.number("conditions.max_rounds", rounds);
                    }
                    if let Some(epsilon) = conditions.max_epsilon {
                        out.number("conditions.max_epsilon", epsilon);
                    }
                    if let Some(expiry) = conditions.expires_at_ms {
                        out.number("conditions.expires_at_ms", expiry);
                    }
                }
            }
        }
        Entry::ConsentRevoked { study_id, pdc_id, manifest_hash, signature } => {
            out.study(study_id);
            out.party("pdc_id", pdc_id);
            out.hash("manifest_hash", manifest_hash);
            out.push("signature", hex::encode(signature), FieldKind::Signature);
        }
        Entry::RoundOpened { study_id, round, participants, model_hash } => {
            out.study(study_id);
            out.round(*round);
            for participant in participants {
                out.party("participants[]", participant);
            }
            out.hash("model_hash", model_hash);
        }
        Entry::ContributionAccepted { contribution: c, signature } => {
            out.study(&c.study_id);
            out.round(c.round);
            out.party("contribution.pdc_id", &c.pdc_id);
            out.number("contribution.n_examples", c.n_examples);
            out.number("contribution.n_parameters", c.n_parameters);
            out.hash("contribution.update_hash", &c.update_hash);
            out.number("contribution.train_loss", c.train_loss);
            match &c.privacy {
                None => out.text("contribution.privacy", "none"),
                Some(claim) => {
                    out.text("contribution.privacy.dataset", &claim.dataset);
                    out.number("contribution.privacy.noise_multiplier", claim.noise_multiplier);
                    out.number("contribution.privacy.sampling_rate", claim.sampling_rate);
                    out.number("contribution.privacy.steps", claim.steps);
                    out.number("contribution.privacy.clip_norm", claim.clip_norm);
                    out.number("contribution.privacy.epsilon", claim.epsilon);
                    out.number("contribution.privacy.delta", claim.delta);
                }
            }
            out.push("signature", hex::encode(signature), FieldKind::Signature);
        }
        Entry::UpdateRejected { study_id, round, pdc_id, reason } => {
            out.study(study_id);
            out.round(*round);
            out.party("pdc_id", pdc_id);
            out.text("reason", reason);
        }
        Entry::RoundAggregated { study_id, round, model_hash, contributors, metrics } => {
            out.study(study_id);
            out.round(*round);
            out.hash("model_hash", model_hash);
            for contributor in contributors {
                out.party("contributors[]", contributor);
            }
            for (name, value) in metrics {
                out.number(&format!("metrics.{name}"), value);
            }
        }
        Entry::UtilityScores { study_id, round, scores, method, seed } => {
            out.study(study_id);
            out.round(*round);
            for (pdc, score) in scores {
                out.number(&format!("scores.{pdc}"), score);
            }
            out.text("method", method);
            out.number("seed", seed);
        }
        Entry::RewardPaid { study_id, round, pdc_id, amount } => {
            out.study(study_id);
            out.round(*round);
            out.party("pdc_id", pdc_id);
            out.number("amount", amount);
        }
        Entry::PrivacySpent { study_id, round, pdc_id, epsilon, delta } => {
            out.study(study_id);
            out.round(*round);
            out.party("pdc_id", pdc_id);
            out.number("epsilon", epsilon);
            out.number("delta", delta);
        }
        Entry::StudyClosed { study_id, state } => {
            out.study(study_id);
            out.text("state", state);
        }
        Entry::BudgetDeclared { pdc_id, dataset, epsilon, delta } => {
            out.party("pdc_id", pdc_id);
            out.text("dataset", dataset);
            out.number("epsilon", epsilon);
            out.number("delta", delta);
        }
        Entry::RewardsAllotted { study_id, round, budget, carried_over } => {
            out.study(study_id);
            out.round(*round);
            out.number("budget", budget);
            out.text("carried_over", if *carried_over { "yes" } else { "no" });
        }
        Entry::CentralDpRelease { study_id, round, release_hash, clip_norm, noise_std, epsilon, delta } => {
            out.study(study_id);
            out.round(*round);
            out.hash("release_hash", release_hash);
            out.number("clip_norm", clip_norm);
            out.number("noise_std", noise_std);
            out.number("epsilon", epsilon);
            out.number("delta", delta);
        }
        Entry::CoalitionValues { study_id, round, values } => {
            out.study(study_id);
            out.round(*round);
            for (coalition, value) in values {
                let coalition = if coalition.is_empty() { "(previous model)" } else { coalition };
                out.number(&format!("values.{coalition}"), value);
            }
        }
        Entry::StatisticsReleased { release, signature } => {
            if release.kind == StatisticKind::FeatureSummary {
                out.study(&release.scope);
            } else {
                out.text("release.scope", &release.scope);
            }
            out.party("release.pdc_id", &release.pdc_id);
            out.text("release.kind", release.kind.name());
            out.text("release.dataset", &release.dataset);
            out.number("release.noise_multiplier", release.noise_multiplier);
            out.number("release.values", release.values.len());
            out.number("release.epsilon", release.epsilon);
            out.number("release.delta", release.delta);
            out.push("signature", hex::encode(signature), FieldKind::Signature);
        }
        Entry::StandardizationFitted { study_id, contributors, mean, std: _ } => {
            out.study(study_id);
            for contributor in contributors {
                out.party("contributors[]", contributor);
            }
            out.number("features", mean.len());
        }
        Entry::ConsortiumRecorded { file_hash, members } => {
            out.hash("file_hash", file_hash);
            out.number("members", members);
        }
        Entry::KeyRevoked { pdc_id, key, reason } => {
            out.party("pdc_id", pdc_id);
            out.push("key", hex::encode(key), FieldKind::Key);
            out.text("reason", reason);
        }
        Entry::ManifestSigned { study_id, researcher_id, manifest_hash, signature } => {
            out.study(study_id);
            out.party("researcher_id", researcher_id);
            out.hash("manifest_hash", manifest_hash);
            out.push("signature", hex::encode(signature), FieldKind::Signature);
        }
    }
    out.0
}

struct Fields(Vec<Field>);

impl Fields {
    fn push(&mut self, name: &str, value: String, kind: FieldKind) {
        self.0.push(Field { name: name.to_owned(), value, kind });
    }
    fn text(&mut self, name: &str, value: &str) {
        self.push(name, value.to_owned(), FieldKind::Text);
    }
    fn number(&mut self, name: &str, value: impl ToString) {
        self.push(name, value.to_string(), FieldKind::Number);
    }
    fn hash(&mut self, name: &str, value: &[u8; 32]) {
        self.push(name, hex::encode(value), FieldKind::Hash);
    }
    fn study(&mut self, study_id: &str) {
        self.push("study_id", study_id.to_owned(), FieldKind::Study);
    }
    fn party(&mut self, name: &str, pdc_id: &str) {
        self.push(name, pdc_id.to_owned(), FieldKind::Party);
    }
    fn round(&mut self, round: u32) {
        self.push("round", round.to_string(), FieldKind::Round);
    }
}

/// The round an entry names, if any.
pub fn round_of(entry: &Entry) -> Option<u32> {
    fields(entry).into_iter().find(|f| f.kind == FieldKind::Round).and_then(|f| f.value.parse().ok())
}

/// The parties an entry names (the PDC it concerns, participants, contributors, the researcher).
pub fn parties_of(entry: &Entry) -> Vec<String> {
    fields(entry).into_iter().filter(|f| f.kind == FieldKind::Party).map(|f| f.value).collect()
}

/// A one-line summary of an entry, for lists.
pub fn summary(entry: &Entry) -> String {
    match entry {
        Entry::MemberRegistered { pdc_id, role, .. } => format!("{pdc_id} registered as {}", role.name()),
        Entry::KeyRotated { pdc_id, .. } => format!("{pdc_id} rotated its key"),
        Entry::StudyCreated { study_id, .. } => format!("study {study_id} created"),
        Entry::ConsentGranted { pdc_id, conditions, .. } => match conditions {
            Some(_) => format!("{pdc_id} consented, with conditions"),
            None => format!("{pdc_id} consented"),
        },
        Entry::ConsentRevoked { pdc_id, .. } => format!("{pdc_id} revoked its consent"),
        Entry::RoundOpened { round, participants, .. } => {
            format!("round {round} opened for {} hospitals", participants.len())
        }
        Entry::ContributionAccepted { contribution: c, .. } => {
            format!("{} contributed {} examples to round {}", c.pdc_id, c.n_examples, c.round)
        }
        Entry::UpdateRejected { pdc_id, round, reason, .. } => {
            format!("{pdc_id}'s update to round {round} rejected: {reason}")
        }
        Entry::RoundAggregated { round, contributors, .. } => {
            format!("round {round} aggregated from {} hospitals", contributors.len())
        }
        Entry::UtilityScores { round, method, .. } => format!("round {round} utilities ({method})"),
        Entry::RewardPaid { pdc_id, round, amount, .. } => format!("{pdc_id} paid {amount:.6} for round {round}"),
        Entry::PrivacySpent { pdc_id, round, epsilon, .. } => {
            format!("{pdc_id} at cumulative ε {epsilon:.4} after round {round}")
        }
        Entry::StudyClosed { study_id, state } => format!("study {study_id} closed: {state}"),
        Entry::BudgetDeclared { pdc_id, epsilon, delta, .. } => {
            format!("{pdc_id} declared budget ε {epsilon} at δ {delta:e}")
        }
        Entry::RewardsAllotted { round, budget, carried_over, .. } => {
            let note = if *carried_over { ", carried over" } else { "" };
            format!("round {round} allotted {budget:.6}{note}")
        }
        Entry::CentralDpRelease { round, epsilon, .. } => {
            format!("round {round} central DP release, study ε {epsilon:.4}")
        }
        Entry::CoalitionValues { round, values, .. } => format!("round {round}: {} coalition values", values.len()),
        Entry::StatisticsReleased { release, .. } => {
            format!("{} released {} (cumulative ε {:.4})", release.pdc_id, release.kind.name(), release.epsilon)
        }
        Entry::StandardizationFitted { contributors, .. } => {
            format!("standardisation pooled from {} hospitals", contributors.len())
        }
        Entry::ConsortiumRecorded { members, .. } => format!("consortium file with {members} members recorded"),
        Entry::KeyRevoked { pdc_id, reason, .. } => format!("{pdc_id}'s key revoked: {reason}"),
        Entry::ManifestSigned { researcher_id, .. } => format!("manifest signed by {researcher_id}"),
    }
}

/// What the entry explorer searches for; every criterion given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct EntryQuery {
    /// One search box: an index, a hash or key (or its hex prefix, at least 8 digits), or a study or party id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// A hash, or its hex prefix: the entry's leaf hash, or any hash or public key the entry names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The study.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study: Option<String>,
    /// The round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    /// A party the entry names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdc: Option<String>,
}

impl EntryQuery {
    /// Whether no criterion is set.
    pub fn is_empty(&self) -> bool {
        [&self.q, &self.hash, &self.study, &self.pdc].iter().all(|c| c.as_deref().is_none_or(str::is_empty))
            && self.round.is_none()
    }

    /// Whether the entry at `index`, with leaf hash `leaf_hex`, matches.
    pub fn matches(&self, index: u64, leaf_hex: &str, entry: Option<&Entry>) -> bool {
        let entry_fields = entry.map(fields).unwrap_or_default();
        let hash_matches = |prefix: &str| {
            let prefix = prefix.to_ascii_lowercase();
            leaf_hex.starts_with(&prefix)
                || entry_fields
                    .iter()
                    .any(|f| matches!(f.kind, FieldKind::Hash | FieldKind::Key) && f.value.starts_with(&prefix))
        };
        let names = |kind: FieldKind, value: &str| entry_fields.iter().any(|f| f.kind == kind && f.value == value);
        if let Some(q) = self.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            let by_index = q.parse::<u64>().is_ok_and(|i| i == index);
            let by_hash = q.len() >= 8 && q.chars().all(|c| c.is_ascii_hexdigit()) && hash_matches(q);
            let by_name = names(FieldKind::Study, q) || names(FieldKind::Party, q);
            if !(by_index || by_hash || by_name) {
                return false;
            }
        }
        if let Some(prefix) = self.hash.as_deref().filter(|h| !h.is_empty())
            && !hash_matches(prefix)
        {
            return false;
        }
        if let Some(study) = self.study.as_deref().filter(|s| !s.is_empty())
            && !names(FieldKind::Study, study)
        {
            return false;
        }
        if let Some(round) = self.round
            && !names(FieldKind::Round, &round.to_string())
        {
            return false;
        }
        if let Some(pdc) = self.pdc.as_deref().filter(|p| !p.is_empty())
            && !names(FieldKind::Party, pdc)
        {
            return false;
        }
        true
    }
}

/// A study as the studies list shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StudySummary {
    /// The study.
    pub id: String,
    /// SHA3-256 of its canonical manifest, hex.
    pub manifest_hash: String,
    /// The researcher who signed the manifest, if one did.
    pub researcher: Option<String>,
    /// `created`, `running`, or the state it closed in.
    pub state: String,
    /// Rounds aggregated.
    pub rounds_aggregated: usize,
    /// Hospitals whose consent stands.
    pub consenting: usize,
    /// The `StudyCreated` entry.
    pub created_entry: u64,
}

/// One step of a study's lifecycle.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LifecycleStep {
    /// What happened.
    pub what: String,
    /// The entry that records it.
    pub entry: u64,
    /// When it was sealed, Unix milliseconds, if a checkpoint covers it.
    pub sealed_at_ms: Option<u64>,
}

/// A hospital's accepted contribution to a round.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContributionRow {
    /// The hospital.
    pub pdc: String,
    /// Its training examples (the FedAvg weight).
    pub n_examples: u64,
    /// Its local training loss.
    pub train_loss: f64,
    /// The update's hash, hex.
    pub update_hash: String,
    /// Whether the update went into the aggregate (false: left out as flagged, or the round is not aggregated).
    pub aggregated: bool,
    /// The entry.
    pub entry: u64,
}

/// A rejected update.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RejectionRow {
    /// The hospital.
    pub pdc: String,
    /// Why.
    pub reason: String,
    /// The entry.
    pub entry: u64,
}

/// One round of a study.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoundView {
    /// The round number.
    pub round: u32,
    /// `aggregated` or `open`.
    pub status: String,
    /// The timeline's line: "round 7 aggregated · 4 of 5 hospitals returned".
    pub headline: String,
    /// How many times the round was opened (more than once: retried).
    pub attempts: usize,
    /// The hospitals asked to train (in the last attempt).
    pub participants: Vec<String>,
    /// The model sent out, hex.
    pub model_sent: String,
    /// The last `RoundOpened` entry.
    pub opened_entry: u64,
    /// Accepted contributions.
    pub contributions: Vec<ContributionRow>,
    /// Rejected updates.
    pub rejections: Vec<RejectionRow>,
    /// Accepted updates left out of the aggregate (flagged by the anomaly checks).
    pub left_out: Vec<String>,
    /// Participants that neither contributed nor were rejected.
    pub dropped: Vec<String>,
    /// The model the round produced, hex, once aggregated.
    pub model_produced: Option<String>,
    /// The round's validation metrics, once aggregated.
    pub metrics: Vec<(String, f64)>,
    /// The `RoundAggregated` entry.
    pub aggregated_entry: Option<u64>,
}

/// A study and its rounds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StudyView {
    /// The study as the list shows it.
    pub summary: StudySummary,
    /// Created, signed, first consent, first round, closed.
    pub lifecycle: Vec<LifecycleStep>,
    /// The rounds, in order.
    pub rounds: Vec<RoundView>,
    /// Each validation metric's values by round, metric names sorted.
    pub metrics: BTreeMap<String, Vec<(u32, f64)>>,
    /// The model the last aggregated round produced: the study's result, hex.
    pub final_model: Option<String>,
}

/// Every study, in order of creation.
pub fn studies(entries: &[Indexed], seals: &Seals) -> Vec<StudyView> {
    let mut order: Vec<String> = Vec::new();
    let mut views: BTreeMap<String, StudyView> = BTreeMap::new();
    let mut consenting: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let step = |view: &mut StudyView, what: String, index: u64| {
        view.lifecycle.push(LifecycleStep { what, entry: index, sealed_at_ms: seals.sealed_at(index) });
    };
    for (index, entry) in entries {
        let index = *index;
        if let Entry::StudyCreated { study_id, manifest_hash } = entry {
            if views.contains_key(study_id) {
                continue;
            }
            order.push(study_id.clone());
            let mut view = StudyView {
                summary: StudySummary {
                    id: study_id.clone(),
                    manifest_hash: hex::encode(manifest_hash),
                    researcher: None,
                    state: "created".into(),
                    rounds_aggregated: 0,
                    consenting: 0,
                    created_entry: index,
                },
                lifecycle: Vec::new(),
                rounds: Vec::new(),
                metrics: BTreeMap::new(),
                final_model: None,
            };
            step(&mut view, "created".into(), index);
            views.insert(study_id.clone(), view);
            continue;
        }
        let Some(view) = entry.study_id().and_then(|id| views.get_mut(id)) else { continue };
        match entry {
            Entry::ManifestSigned { researcher_id, .. } => {
                view.summary.researcher = Some(researcher_id.clone());
                step(view, format!("manifest signed by {researcher_id}"), index);
            }
            Entry::ConsentGranted { study_id, pdc_id, .. } => {
                let set = consenting.entry(study_id.clone()).or_default();
                if set.is_empty() && !view.lifecycle.iter().any(|s| s.what.starts_with("first consent")) {
                    step(view, format!("first consent ({pdc_id})"), index);
                }
                set.insert(pdc_id.clone());
            }
            Entry::ConsentRevoked { study_id, pdc_id, .. } => {
                consenting.entry(study_id.clone()).or_default().remove(pdc_id);
            }
            Entry::RoundOpened { round, participants, model_hash, .. } => {
                if view.rounds.is_empty() {
                    step(view, "first round opened".into(), index);
                    view.summary.state = "running".into();
                }
                match view.rounds.iter_mut().find(|r| r.round == *round) {
                    Some(existing) => {
                        existing.attempts += 1;
                        existing.participants = participants.clone();
                        existing.model_sent = hex::encode(model_hash);
                        existing.opened_entry = index;
                        // A retry starts afresh: what the failed attempt received did not make it into a model.
                        existing.contributions.clear();
                        existing.rejections.clear();
                    }
                    None => view.rounds.push(RoundView {
                        round: *round,
                        status: "open".into(),
                        headline: String::new(),
                        attempts: 1,
                        participants: participants.clone(),
                        model_sent: hex::encode(model_hash),
                        opened_entry: index,
                        contributions: Vec::new(),
                        rejections: Vec::new(),
                        left_out: Vec::new(),
                        dropped: Vec::new(),
                        model_produced: None,
                        metrics: Vec::new(),
                        aggregated_entry: None,
                    }),
                }
            }
            Entry::ContributionAccepted { contribution: c, .. } => {
                if let Some(round) = view.rounds.iter_mut().find(|r| r.round == c.round) {
                    round.contributions.push(ContributionRow {
                        pdc: c.pdc_id.clone(),
                        n_examples: c.n_examples,
                        train_loss: c.train_loss,
                        update_hash: hex::encode(c.update_hash),
                        aggregated: false,
                        entry: index,
                    });
                }
            }
            Entry::UpdateRejected { round, pdc_id, reason, .. } => {
                if let Some(round) = view.rounds.iter_mut().find(|r| r.round == *round) {
                    round.rejections.push(RejectionRow { pdc: pdc_id.clone(), reason: reason.clone(), entry: index });
                }
            }
            Entry::RoundAggregated { round, model_hash, contributors, metrics, .. } => {
                if let Some(round) = view.rounds.iter_mut().find(|r| r.round == *round) {
                    round.status = "aggregated".into();
                    round.model_produced = Some(hex::encode(model_hash));
                    round.metrics = metrics.clone();
                    round.aggregated_entry = Some(index);
                    for contribution in &mut round.contributions {
                        contribution.aggregated = contributors.contains(&contribution.pdc);
                    }
                    for (name, value) in metrics {
                        view.metrics.entry(name.clone()).or_default().push((round.round, *value));
                    }
                    view.final_model = Some(hex::encode(model_hash));
                }
            }
            Entry::StudyClosed { state, .. } => {
                view.summary.state = state.clone();
                step(view, format!("closed: {state}"), index);
            }
            _ => {}
        }
    }
    order
        .into_iter()
        .filter_map(|id| {
            let mut view = views.remove(&id)?;
            view.summary.consenting = consenting.get(&id).map_or(0, BTreeSet::len);
            view.summary.rounds_aggregated = view.rounds.iter().filter(|r| r.aggregated_entry.is_some()).count();
            let closed = view.lifecycle.iter().any(|s| s.what.starts_with("closed"));
            for round in &mut view.rounds {
                finish_round(round, closed);
            }
            Some(view)
        })
        .collect()
}

/// Fills in a round's derived lists and its headline.
fn finish_round(round: &mut RoundView, study_closed: bool) {
    let returned: BTreeSet<&str> = round.contributions.iter().map(|c| c.pdc.as_str()).collect();
    let rejected: BTreeSet<&str> = round.rejections.iter().map(|r| r.pdc.as_str()).collect();
    let aggregated = round.aggregated_entry.is_some();
    round.left_out = if aggregated {
        round.contributions.iter().filter(|c| !c.aggregated).map(|c| c.pdc.clone()).collect()
    } else {
        Vec::new()
    };
    // Only a finished round says who dropped out; an open one may still hear from them.
    round.dropped = if aggregated || study_closed {
        round
            .participants
            .iter()
            .filter(|p| !returned.contains(p.as_str()) && !rejected.contains(p.as_str()))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let of = format!("{} of {} hospitals returned", returned.len(), round.participants.len());
    let mut headline = if aggregated {
        format!("round {} aggregated · {of}", round.round)
    } else if study_closed {
        format!("round {} never aggregated · {of}", round.round)
    } else {
        format!("round {} open · {of} so far", round.round)
    };
    if !round.rejections.is_empty() {
        headline.push_str(&format!(" · {} rejected", round.rejections.len()));
    }
    if !round.left_out.is_empty() {
        headline.push_str(&format!(" · {} left out as flagged", round.left_out.len()));
    }
    if !round.dropped.is_empty() {
        headline.push_str(&format!(" · {} dropped out", round.dropped.len()));
    }
    if round.attempts > 1 {
        headline.push_str(&format!(" · opened {} times", round.attempts));
    }
    round.headline = headline;
}

/// A hospital's declared privacy budget.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Budget {
    /// The table it protects.
    pub dataset: String,
    /// The total ε.
    pub epsilon: f64,
    /// The total δ.
    pub delta: f64,
    /// The `BudgetDeclared` entry.
    pub entry: u64,
}

/// One spend of privacy budget: the cumulative figures after it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Spend {
    /// The study (or feasibility query) spent on.
    pub scope: String,
    /// The round, for training.
    pub round: Option<u32>,
    /// `training` or the statistic released.
    pub what: String,
    /// Cumulative ε after the spend.
    pub epsilon: f64,
    /// Cumulative δ after the spend.
    pub delta: f64,
    /// Whether it exceeds the declared budget (or no budget was declared).
    pub outside_budget: bool,
    /// The entry.
    pub entry: u64,
}

/// A hospital's privacy account.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HospitalPrivacy {
    /// The hospital.
    pub pdc: String,
    /// Its declared budget.
    pub budget: Option<Budget>,
    /// Its spends, in log order.
    pub spends: Vec<Spend>,
}

/// The mechanism of one local-DP release: a hospital's DP-SGD parameters for a round.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MechanismRow {
    /// The study.
    pub study: String,
    /// The round.
    pub round: u32,
    /// The hospital.
    pub pdc: String,
    /// The clip norm C.
    pub clip_norm: f64,
    /// The noise multiplier σ.
    pub noise_multiplier: f64,
    /// The sampling rate q.
    pub sampling_rate: f64,
    /// DP-SGD steps.
    pub steps: u64,
    /// Cumulative ε after it.
    pub epsilon: f64,
    /// The contribution's entry.
    pub entry: u64,
}

/// A central DP release (DP-FedAvg).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CentralRow {
    /// The study.
    pub study: String,
    /// The round.
    pub round: u32,
    /// The clip norm S.
    pub clip_norm: f64,
    /// The noise's standard deviation.
    pub noise_std: f64,
    /// The study's cumulative ε.
    pub epsilon: f64,
    /// At δ.
    pub delta: f64,
    /// The entry.
    pub entry: u64,
}

/// An aggregated round none of whose updates was made differentially private.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoundRef {
    /// The study.
    pub study: String,
    /// The round.
    pub round: u32,
    /// The `RoundAggregated` entry.
    pub entry: u64,
}

/// The privacy page.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PrivacyView {
    /// Each hospital with a budget or a spend, sorted by id.
    pub hospitals: Vec<HospitalPrivacy>,
    /// Local DP mechanism parameters, per contribution.
    pub mechanisms: Vec<MechanismRow>,
    /// Central DP releases.
    pub central: Vec<CentralRow>,
    /// Aggregated rounds without any DP.
    pub rounds_without_dp: Vec<RoundRef>,
}

/// Folds the privacy entries.
pub fn privacy(entries: &[Indexed]) -> PrivacyView {
    let mut hospitals: BTreeMap<String, HospitalPrivacy> = BTreeMap::new();
    let mut mechanisms = Vec::new();
    let mut central = Vec::new();
    let mut private_rounds: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut aggregated = Vec::new();
    let account = |hospitals: &mut BTreeMap<String, HospitalPrivacy>, pdc: &str| {
        hospitals.entry(pdc.to_owned()).or_insert_with(|| HospitalPrivacy {
            pdc: pdc.to_owned(),
            budget: None,
            spends: Vec::new(),
        });
    };
    for (index, entry) in entries {
        let index = *index;
        let spend = |hospitals: &mut BTreeMap<String, HospitalPrivacy>, pdc: &str, mut spend: Spend| {
            account(hospitals, pdc);
            let Some(account) = hospitals.get_mut(pdc) else { return };
            spend.outside_budget =
                account.budget.as_ref().is_none_or(|b| spend.epsilon > b.epsilon || spend.delta > b.delta);
            account.spends.push(spend);
        };
        match entry {
            Entry::BudgetDeclared { pdc_id, dataset, epsilon, delta } => {
                account(&mut hospitals, pdc_id);
                if let Some(account) = hospitals.get_mut(pdc_id)
                    && account.budget.is_none()
                {
                    account.budget =
                        Some(Budget { dataset: dataset.clone(), epsilon: *epsilon, delta: *delta, entry: index });
                }
            }
            Entry::PrivacySpent { study_id, round, pdc_id, epsilon, delta } => spend(
                &mut hospitals,
                pdc_id,
                Spend {
                    scope: study_id.clone(),
                    round: Some(*round),
                    what: "training".into(),
                    epsilon: *epsilon,
                    delta: *delta,
                    outside_budget: false,
                    entry: index,
                },
            ),
            Entry::StatisticsReleased { release, .. } => spend(
                &mut hospitals,
                &release.pdc_id,
                Spend {
                    scope: release.scope.clone(),
                    round: None,
                    what: release.kind.name().into(),
                    epsilon: release.epsilon,
                    delta: release.delta,
                    outside_budget: false,
                    entry: index,
                },
            ),
            Entry::ContributionAccepted { contribution: c, .. } => {
                if let Some(claim) = &c.privacy {
                    private_rounds.insert((c.study_id.clone(), c.round));
                    mechanisms.push(MechanismRow {
                        study: c.study_id.clone(),
                        round: c.round,
                        pdc: c.pdc_id.clone(),
                        clip_norm: claim.clip_norm,
                        noise_multiplier: claim.noise_multiplier,
                        sampling_rate: claim.sampling_rate,
                        steps: claim.steps,
                        epsilon: claim.epsilon,
                        entry: index,
                    });
                }
            }
            Entry::CentralDpRelease { study_id, round, clip_norm, noise_std, epsilon, delta, .. } => {
                private_rounds.insert((study_id.clone(), *round));
                central.push(CentralRow {
                    study: study_id.clone(),
                    round: *round,
                    clip_norm: *clip_norm,
                    noise_std: *noise_std,
                    epsilon: *epsilon,
                    delta: *delta,
                    entry: index,
                });
            }
            Entry::RoundAggregated { study_id, round, .. } => {
                aggregated.push(RoundRef { study: study_id.clone(), round: *round, entry: index })
            }
            _ => {}
        }
    }
    let rounds_without_dp =
        aggregated.into_iter().filter(|r| !private_rounds.contains(&(r.study.clone(), r.round))).collect();
    PrivacyView { hospitals: hospitals.into_values().collect(), mechanisms, central, rounds_without_dp }
}

/// A consent or its revocation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConsentRow {
    /// The study.
    pub study: String,
    /// The hospital.
    pub pdc: String,
    /// `grant` or `revoke`.
    pub action: String,
    /// The manifest consented to, hex.
    pub manifest_hash: String,
    /// The conditions, in words; empty for none.
    pub conditions: Vec<String>,
    /// The key that signed it (the hospital's registered key at that point), hex; `None` if none was registered.
    pub signed_by_key: Option<String>,
    /// Whether the signature verifies under that key.
    pub signature_valid: bool,
    /// When the entry was sealed, Unix milliseconds.
    pub sealed_at_ms: Option<u64>,
    /// The entry.
    pub entry: u64,
}

/// Every consent and revocation, in log order, each checked against its signer's key at that point of the log.
pub fn consents(entries: &[Indexed], seals: &Seals) -> Vec<ConsentRow> {
    let mut keys: BTreeMap<String, [u8; 32]> = BTreeMap::new();
    let mut rows = Vec::new();
    for (index, entry) in entries {
        match entry {
            Entry::MemberRegistered { pdc_id, public_key, .. } => {
                keys.insert(pdc_id.clone(), *public_key);
            }
            Entry::KeyRotated { pdc_id, new_key, .. } => {
                keys.insert(pdc_id.clone(), *new_key);
            }
            Entry::KeyRevoked { pdc_id, .. } => {
                keys.remove(pdc_id);
            }
            _ => {}
        }
        let (study, pdc, manifest_hash, action, conditions) = match entry {
            Entry::ConsentGranted { study_id, pdc_id, manifest_hash, conditions, .. } => {
                let words = conditions.as_ref().map(condition_words).unwrap_or_default();
                (study_id, pdc_id, manifest_hash, "grant", words)
            }
            Entry::ConsentRevoked { study_id, pdc_id, manifest_hash, .. } => {
                (study_id, pdc_id, manifest_hash, "revoke", Vec::new())
            }
            _ => continue,
        };
        let key = keys.get(pdc).copied();
        let signature_valid = key
            .and_then(|key| PublicKey::from_bytes(&key).ok())
            .is_some_and(|key| entry.verify_signature(&key).is_ok());
        rows.push(ConsentRow {
            study: study.clone(),
            pdc: pdc.clone(),
            action: action.into(),
            manifest_hash: hex::encode(manifest_hash),
            conditions,
            signed_by_key: key.map(hex::encode),
            signature_valid,
            sealed_at_ms: seals.sealed_at(*index),
            entry: *index,
        });
    }
    rows
}

fn condition_words(conditions: &pdc_ledger::signing::ConsentConditions) -> Vec<String> {
    let mut words = Vec::new();
    if let Some(rounds) = conditions.max_rounds {
        words.push(format!("up to round {rounds}"));
    }
    if let Some(epsilon) = conditions.max_epsilon {
        words.push(format!("at most ε {epsilon}"));
    }
    if let Some(expiry) = conditions.expires_at_ms {
        words.push(format!("until {}", crate::time::utc(expiry)));
    }
    words
}

/// A round's reward allotment and what was paid from it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RewardRound {
    /// The round.
    pub round: u32,
    /// How the utilities were computed, and the seed of any sampling.
    pub method: Option<String>,
    /// The seed.
    pub seed: Option<u64>,
    /// The allotted budget.
    pub budget: Option<f64>,
    /// Whether the budget was carried over instead of paid.
    pub carried_over: bool,
    /// What was paid, per hospital, sorted by id.
    pub payments: Vec<(String, f64)>,
    /// The sum of the payments.
    pub paid: f64,
    /// Whether the payments sum to the budget within the audit's tolerance (or, carried over, nothing was paid).
    pub reconciles: bool,
    /// The `RewardsAllotted` entry.
    pub allotted_entry: Option<u64>,
    /// The `UtilityScores` entry.
    pub utilities_entry: Option<u64>,
}

/// A study's utilities and rewards.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StudyRewards {
    /// The study.
    pub study: String,
    /// The hospitals with a utility or a payment, sorted.
    pub hospitals: Vec<String>,
    /// The rounds with a utility or an allotment, in order.
    pub rounds: Vec<RewardRound>,
    /// Each hospital's utility per round: `utilities[h][r]` for `hospitals[h]` and `rounds[r]`.
    pub utilities: Vec<Vec<Option<f64>>>,
    /// Each hospital's total payment, in `hospitals` order.
    pub totals: Vec<f64>,
}

/// Every study's rewards, in order of the first reward entry.
pub fn rewards(entries: &[Indexed]) -> Vec<StudyRewards> {
    type Scores = BTreeMap<(String, u32), f64>;
    let mut order: Vec<String> = Vec::new();
    let mut rounds: BTreeMap<String, BTreeMap<u32, RewardRound>> = BTreeMap::new();
    let mut scores: BTreeMap<String, Scores> = BTreeMap::new();
    let mut hospitals: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (index, entry) in entries {
        let (study, round) = match entry {
            Entry::UtilityScores { study_id, round, .. }
            | Entry::RewardsAllotted { study_id, round, .. }
            | Entry::RewardPaid { study_id, round, .. } => (study_id, *round),
            _ => continue,
        };
        if !order.contains(study) {
            order.push(study.clone());
        }
        let row = rounds.entry(study.clone()).or_default().entry(round).or_insert_with(|| RewardRound {
            round,
            method: None,
            seed: None,
            budget: None,
            carried_over: false,
            payments: Vec::new(),
            paid: 0.0,
            reconciles: false,
            allotted_entry: None,
            utilities_entry: None,
        });
        let members = hospitals.entry(study.clone()).or_default();
        match entry {
            Entry::UtilityScores { scores: values, method, seed, .. } => {
                row.method = Some(method.clone());
                row.seed = Some(*seed);
                row.utilities_entry = Some(*index);
                for (pdc, score) in values {
                    members.insert(pdc.clone());
                    scores.entry(study.clone()).or_default().insert((pdc.clone(), round), *score);
                }
            }
            Entry::RewardsAllotted { budget, carried_over, .. } => {
                row.budget = Some(*budget);
                row.carried_over = *carried_over;
                row.allotted_entry = Some(*index);
            }
            Entry::RewardPaid { pdc_id, amount, .. } => {
                members.insert(pdc_id.clone());
                row.payments.push((pdc_id.clone(), *amount));
            }
            _ => {}
        }
    }
    order
        .into_iter()
        .map(|study| {
            let members: Vec<String> = hospitals.remove(&study).unwrap_or_default().into_iter().collect();
            let study_scores = scores.remove(&study).unwrap_or_default();
            let mut study_rounds: Vec<RewardRound> = rounds.remove(&study).unwrap_or_default().into_values().collect();
            for round in &mut study_rounds {
                round.payments.sort_by(|a, b| a.0.cmp(&b.0));
                round.paid = round.payments.iter().map(|(_, amount)| amount).sum();
                round.reconciles = match round.budget {
                    None => round.payments.is_empty(),
                    Some(_) if round.carried_over => round.payments.is_empty(),
                    Some(budget) => {
                        (round.paid - budget).abs() <= pdc_ledger::audit::REWARD_TOLERANCE * budget.abs().max(1.0)
                    }
                };
            }
            let utilities = members
                .iter()
                .map(|pdc| study_rounds.iter().map(|r| study_scores.get(&(pdc.clone(), r.round)).copied()).collect())
                .collect();
            let totals = members
                .iter()
                .map(|pdc| {
                    study_rounds.iter().flat_map(|r| &r.payments).filter(|(p, _)| p == pdc).map(|(_, a)| a).sum()
                })
                .collect();
            StudyRewards { study, hospitals: members, rounds: study_rounds, utilities, totals }
        })
        .collect()
}

/// A key change of a member.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyEvent {
    /// `registered`, `rotated` or `revoked`.
    pub what: String,
    /// The key registered, rotated to, or revoked, hex.
    pub key: String,
    /// Why, for a revocation.
    pub reason: Option<String>,
    /// The entry.
    pub entry: u64,
}

/// A member of the federation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HospitalView {
    /// Its id.
    pub id: String,
    /// Its role.
    pub role: String,
    /// Its current key, hex; `None` after a revocation.
    pub key: Option<String>,
    /// Registrations, rotations and revocations, in log order.
    pub keys: Vec<KeyEvent>,
    /// Studies it consented to (and has not withdrawn from), sorted.
    pub consented: Vec<String>,
    /// Rounds it contributed to, as `study round`.
    pub rounds_joined: Vec<(String, u32)>,
    /// The last entry that names it.
    pub last_seen_entry: Option<u64>,
    /// When that entry was sealed, Unix milliseconds.
    pub last_seen_ms: Option<u64>,
}

/// Every registered member, in order of registration.
pub fn hospitals(entries: &[Indexed], seals: &Seals) -> Vec<HospitalView> {
    let mut order: Vec<String> = Vec::new();
    let mut views: BTreeMap<String, HospitalView> = BTreeMap::new();
    let mut consented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (index, entry) in entries {
        let index = *index;
        if let Entry::MemberRegistered { pdc_id, role, .. } = entry
            && !views.contains_key(pdc_id)
        {
            order.push(pdc_id.clone());
            views.insert(
                pdc_id.clone(),
                HospitalView {
                    id: pdc_id.clone(),
                    role: role.name().into(),
                    key: None,
                    keys: Vec::new(),
                    consented: Vec::new(),
                    rounds_joined: Vec::new(),
                    last_seen_entry: None,
                    last_seen_ms: None,
                },
            );
        }
        for party in parties_of(entry) {
            if let Some(view) = views.get_mut(&party) {
                view.last_seen_entry = Some(index);
                view.last_seen_ms = seals.sealed_at(index);
            }
        }
        match entry {
            Entry::MemberRegistered { pdc_id, public_key, .. } => {
                if let Some(view) = views.get_mut(pdc_id) {
                    view.key = Some(hex::encode(public_key));
                    let key = hex::encode(public_key);
                    view.keys.push(KeyEvent { what: "registered".into(), key, reason: None, entry: index });
                }
            }
            Entry::KeyRotated { pdc_id, new_key, .. } => {
                if let Some(view) = views.get_mut(pdc_id) {
                    view.key = Some(hex::encode(new_key));
                    let key = hex::encode(new_key);
                    view.keys.push(KeyEvent { what: "rotated".into(), key, reason: None, entry: index });
                }
            }
            Entry::KeyRevoked { pdc_id, key, reason } => {
                if let Some(view) = views.get_mut(pdc_id) {
                    view.key = None;
                    view.keys.push(KeyEvent {
                        what: "revoked".into(),
                        key: hex::encode(key),
                        reason: Some(reason.clone()),
                        entry: index,
                    });
                }
            }
            Entry::ConsentGranted { study_id, pdc_id, .. } => {
                consented.entry(pdc_id.clone()).or_default().insert(study_id.clone());
            }
            Entry::ConsentRevoked { study_id, pdc_id, .. } => {
                consented.entry(pdc_id.clone()).or_default().remove(study_id);
            }
            Entry::ContributionAccepted { contribution: c, .. } => {
                if let Some(view) = views.get_mut(&c.pdc_id) {
                    let joined = (c.study_id.clone(), c.round);
                    if !view.rounds_joined.contains(&joined) {
                        view.rounds_joined.push(joined);
                    }
                }
            }
            _ => {}
        }
    }
    order
        .into_iter()
        .filter_map(|id| {
            let mut view = views.remove(&id)?;
            view.consented = consented.remove(&id).unwrap_or_default().into_iter().collect();
            Some(view)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(round: u32, participants: &[&str]) -> Entry {
        Entry::RoundOpened {
            study_id: "s".into(),
            round,
            participants: participants.iter().map(|p| p.to_string()).collect(),
            model_hash: [round as u8; 32],
        }
    }

    fn rejected(round: u32, pdc: &str) -> Entry {
        Entry::UpdateRejected { study_id: "s".into(), round, pdc_id: pdc.into(), reason: "late".into() }
    }

    #[test]
    fn seals_date_an_entry_by_the_first_checkpoint_that_covers_it() {
        let seals = Seals::new(vec![(5, 2_000), (2, 1_000)]);
        assert_eq!(seals.sealed_at(0), Some(1_000));
        assert_eq!(seals.sealed_at(1), Some(1_000));
        assert_eq!(seals.sealed_at(2), Some(2_000));
        assert_eq!(seals.sealed_at(4), Some(2_000));
        assert_eq!(seals.sealed_at(5), None);
    }

    #[test]
    fn a_retried_round_counts_only_its_last_attempt() {
        let entries: Vec<Indexed> = (0u64..)
            .zip([
                Entry::StudyCreated { study_id: "s".into(), manifest_hash: [1; 32] },
                opened(1, &["a", "b", "c"]),
                rejected(1, "a"),
                opened(1, &["b", "c"]),
            ])
            .collect();
        let studies = studies(&entries, &Seals::default());
        let round = &studies[0].rounds[0];
        assert_eq!(round.attempts, 2);
        assert!(round.rejections.is_empty(), "the first attempt's rejection went with it");
        assert_eq!(round.headline, "round 1 open · 0 of 2 hospitals returned so far · opened 2 times");
        assert!(round.dropped.is_empty(), "an open round may still hear from its participants");
        assert_eq!(studies[0].summary.state, "running");
    }

    #[test]
    fn a_closed_study_names_who_dropped_out_of_an_unfinished_round() {
        let entries: Vec<Indexed> = (0u64..)
            .zip([
                Entry::StudyCreated { study_id: "s".into(), manifest_hash: [1; 32] },
                opened(1, &["a", "b"]),
                rejected(1, "a"),
                Entry::StudyClosed { study_id: "s".into(), state: "failed".into() },
            ])
            .collect();
        let studies = studies(&entries, &Seals::default());
        let round = &studies[0].rounds[0];
        assert_eq!(round.dropped, ["b"]);
        assert_eq!(round.headline, "round 1 never aggregated · 0 of 2 hospitals returned · 1 rejected · 1 dropped out");
        assert_eq!(studies[0].summary.state, "failed");
    }

    #[test]
    fn queries_match_by_index_hash_prefix_and_names() {
        let entry = rejected(3, "h7");
        let leaf = "ab".repeat(32);
        let query = |q: EntryQuery| q.matches(9, &leaf, Some(&entry));
        assert!(query(EntryQuery { q: Some("9".into()), ..Default::default() }));
        assert!(!query(EntryQuery { q: Some("8".into()), ..Default::default() }));
        assert!(query(EntryQuery { q: Some("ABABABAB".into()), ..Default::default() }));
        assert!(!query(EntryQuery { q: Some("abab".into()), ..Default::default() }), "too short a hash prefix");
        assert!(query(EntryQuery { q: Some("h7".into()), ..Default::default() }));
        assert!(query(EntryQuery {
            study: Some("s".into()),
            round: Some(3),
            pdc: Some("h7".into()),
            ..Default::default()
        }));
        assert!(!query(EntryQuery { round: Some(4), ..Default::default() }));
        assert!(EntryQuery { q: Some(String::new()), ..Default::default() }.is_empty());
    }

    #[test]
    fn a_spend_without_a_budget_or_beyond_it_is_outside() {
        let spend = |epsilon: f64| Entry::PrivacySpent {
            study_id: "s".into(),
            round: 1,
            pdc_id: "h".into(),
            epsilon,
            delta: 1e-6,
        };
        let entries: Vec<Indexed> = (0u64..)
            .zip([
                spend(0.5),
                Entry::BudgetDeclared { pdc_id: "h".into(), dataset: "t".into(), epsilon: 1.0, delta: 1e-5 },
                spend(1.0),
                spend(1.5),
            ])
            .collect();
        let view = privacy(&entries);
        let outside: Vec<bool> = view.hospitals[0].spends.iter().map(|s| s.outside_budget).collect();
        assert_eq!(outside, [true, false, true]);
    }
}
