//! Crash recovery: everything a coordinator needs to resume its studies after it was killed at any point.
//!
//! A coordinator's state is rebuilt at start-up from three durable records, and from nothing held in memory:
//!
//! 1. **The ledger** (RocksDB, `<data_dir>/ledger`) is the write-ahead log. Every change of study state is
//!    recorded there before it takes effect and before the caller is answered: registrations and key rotations,
//!    budgets, study creation, consents, each round's opening with its participants, each accepted contribution
//!    (so an acknowledged update is never lost), spends and rejections, each aggregate, and each study's end.
//!    `scan` folds the entries, in order, into what they say of each study.
//! 2. **The study state store** (RocksDB, `<data_dir>/state`, this module's [`StateStore`]) holds what the ledger
//!    does not: whether a study was started, and for every aggregated round a `RoundSnapshot` of the state the
//!    round left (the server optimiser's moments, the suspension tracker, each hospital's figures, the carried
//!    reward budget, central DP's adaptive clip norm). A snapshot is written, synchronously, *before* the round's
//!    aggregate is recorded on the ledger, so every `RoundAggregated` entry has its snapshot; a snapshot whose
//!    aggregate never reached the ledger is ignored and overwritten when the round is aggregated again.
//! 3. **The archives** on disk: each study's manifest and validation set (`<data_dir>/studies/<id>/`), every
//!    accepted update, and every round's model, all stored under their SHA3-256 before they are referred to.
//!
//! On restart a study resumes at the round it was in: an ended study stays ended; a study whose last recorded
//! event is an aggregate handles that round's end again (after the ledger is sealed, so the round is final before
//! the next opens); an open round is opened again for its recorded participants with a fresh deadline, and every
//! contribution the ledger accepted for it counts, exactly once (a PDC whose update was recorded is not asked for
//! it again, and a second upload of it is refused as a duplicate). A round whose aggregation was cut short is
//! aggregated again from its recorded contributions. What is lost is only what was never acknowledged: an upload
//! in flight, a failure report (the PDC is waited for until the new deadline), and open feasibility queries.
//!
//! Before a study is rebuilt its archived manifest is checked against the coordinator's `[limits]`
//! (`over_limits`): one over them (created under higher limits) is left out of this start with its reason
//! logged, and changes nothing, so a stored study can never stop the coordinator from starting or exhaust its
//! memory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use pdc_ledger::Hash;
use pdc_ledger::entry::{Entry, Role};
use pdc_ledger::signing::{ConsentConditions, StatisticsRelease};
use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteOptions};
use serde::{Deserialize, Serialize};

use crate::aggregation::{ServerState, SuspensionTracker};
use crate::consortium::Membership;
use crate::limits::Limits;
use crate::manifest::LimitExceeded;
use crate::pipeline::LEFT_OUT_PREFIX;
use crate::round::AcceptedUpdate;
use crate::service::{HospitalStats, RoundRecord, SUSPENDED_PREFIX};
use crate::{Error, Result};

/// Column family of round snapshots, keyed by study id, NUL, round (big-endian).
const ROUNDS: &str = "rounds";
/// Column family of study lifecycle markers, keyed by study id.
const LIFECYCLE: &str = "lifecycle";
/// The marker of a started study.
const STARTED: &[u8] = b"started";
/// The marker of a study created as a draft, not yet shown to hospitals.
const DRAFT: &[u8] = b"draft";
/// The marker of a draft opened to hospitals.
const RECRUITING: &[u8] = b"recruiting";

/// Why a UpdateRejected entry for a PDC out of budget begins so.
pub(crate) const BUDGET_EXHAUSTED_PREFIX: &str = "privacy budget exhausted: ";

/// The limit a stored study exceeds, if it does: its archived manifest and validation set (under
/// `<data_dir>/studies/<study_id>`) checked against `limits` as `CreateStudy` checks them, before anything of the
/// study is rebuilt. A study created under higher limits is then left out of this start, with the reason logged,
/// rather than failing it or exhausting the coordinator's memory; nothing of it is changed, so a restart with its
/// limits raised again resumes it. An archive that cannot be read or parsed is not a limit: recovery reports it as
/// before.
pub(crate) fn over_limits(data_dir: &Path, study_id: &str, limits: &Limits) -> Option<LimitExceeded> {
    let folder = data_dir.join("studies").join(study_id);
    let (manifest, validation) = crate::service::read_archived_study(&folder).ok()?;
    let manifest = String::from_utf8(manifest).ok()?;
    crate::manifest::limit_exceeded(&manifest, &validation, limits).ok().flatten()
}

/// The durable study state that is not on the ledger, in RocksDB.
pub struct StateStore {
    db: DB,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("path", &self.db.path()).finish()
    }
}

/// What an aggregated round left behind, besides its model and its ledger entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoundSnapshot {
    /// The round, as the study's status reports it.
    pub(crate) record: RoundRecord,
    /// Each hospital's figures after the round.
    pub(crate) hospitals: BTreeMap<String, HospitalStats>,
    /// PDCs out of budget for the study.
    pub(crate) exhausted: BTreeSet<String>,
    /// Consecutive flagged rounds and suspensions.
    pub(crate) suspensions: SuspensionTracker,
    /// Reward budget carried to the next round.
    pub(crate) carried: f64,
    /// The server optimiser's moments and the previous aggregate.
    pub(crate) server_state: ServerState,
    /// Central DP's clip norm for the next round (adaptive clipping moves it), when the study has central DP.
    pub(crate) central_clip_norm: Option<f64>,
}

impl StateStore {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let families =
            [ROUNDS, LIFECYCLE].into_iter().map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&options, dir, families)
            .map_err(|e| Error::State(format!("cannot open {}: {e}", dir.display())))?;
        Ok(Self { db })
    }

    fn put(&self, family: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let cf = self.db.cf_handle(family).expect("opened with every column family");
        // Synchronous: the record must be on disk before the ledger entry that relies on it.
        let mut write = WriteOptions::default();
        write.set_sync(true);
        self.db.put_cf_opt(cf, key, value, &write).map_err(|e| Error::State(format!("cannot write {family}: {e}")))
    }

    fn get(&self, family: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let cf = self.db.cf_handle(family).expect("opened with every column family");
        self.db.get_cf(cf, key).map_err(|e| Error::State(format!("cannot read {family}: {e}")))
    }

    /// Marks `study_id` as started.
    pub fn mark_started(&self, study_id: &str) -> Result<()> {
        self.put(LIFECYCLE, study_id.as_bytes(), STARTED)
    }

    /// Marks `study_id` as a draft.
    pub fn mark_draft(&self, study_id: &str) -> Result<()> {
        self.put(LIFECYCLE, study_id.as_bytes(), DRAFT)
    }

    /// Marks the draft `study_id` as recruiting.
    pub fn mark_recruiting(&self, study_id: &str) -> Result<()> {
        self.put(LIFECYCLE, study_id.as_bytes(), RECRUITING)
    }

    /// Whether `study_id` is a draft (created as one and not opened since).
    pub fn is_draft(&self, study_id: &str) -> Result<bool> {
        Ok(self.get(LIFECYCLE, study_id.as_bytes())?.as_deref() == Some(DRAFT))
    }

    /// Whether `study_id` was started.
    pub fn is_started(&self, study_id: &str) -> Result<bool> {
        Ok(self.get(LIFECYCLE, study_id.as_bytes())?.as_deref() == Some(STARTED))
    }

    fn round_key(study_id: &str, round: u32) -> Vec<u8> {
        let mut key = study_id.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&round.to_be_bytes());
        key
    }

    /// Stores the snapshot of `study_id`'s round `snapshot.record.round`, replacing any earlier one of that round.
    pub(crate) fn put_round(&self, study_id: &str, snapshot: &RoundSnapshot) -> Result<()> {
        // CBOR: binary, and exact for every float (a JSON round trip may move an f64 by one unit in the last place).
        let mut bytes = Vec::new();
        ciborium::into_writer(snapshot, &mut bytes)
            .map_err(|e| Error::State(format!("cannot encode a snapshot: {e}")))?;
        self.put(ROUNDS, &Self::round_key(study_id, snapshot.record.round), &bytes)
    }

    /// The snapshot of `study_id`'s `round`, if one was stored.
    pub(crate) fn round(&self, study_id: &str, round: u32) -> Result<Option<RoundSnapshot>> {
        let Some(bytes) = self.get(ROUNDS, &Self::round_key(study_id, round))? else { return Ok(None) };
        let snapshot: RoundSnapshot = ciborium::from_reader(bytes.as_slice())
            .map_err(|e| Error::State(format!("snapshot of {study_id} round {round} is damaged: {e}")))?;
        if snapshot.record.round != round {
            return Err(Error::State(format!(
                "snapshot stored for {study_id} round {round} is of round {}",
                snapshot.record.round
            )));
        }
        Ok(Some(snapshot))
    }
}

/// A round the ledger shows open: opened, not aggregated.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct OpenProgress {
    pub(crate) round: u32,
    pub(crate) participants: Vec<String>,
    pub(crate) model_hash: Hash,
    /// Accepted contributions, in ledger order.
    pub(crate) contributions: Vec<(String, AcceptedUpdate)>,
    /// Signed cumulative spends of the round, by PDC.
    pub(crate) spends: BTreeMap<String, (f64, f64)>,
    /// PDCs whose update of the round was rejected (each rejection once).
    pub(crate) rejected: Vec<String>,
    /// PDCs that declined the round because their budget is exhausted.
    pub(crate) exhausted: Vec<String>,
}

/// What the ledger says of one study.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct StudyProgress {
    pub(crate) manifest_hash: Hash,
    pub(crate) consents: BTreeSet<String>,
    /// The conditions of consents that carry some.
    pub(crate) conditions: BTreeMap<String, ConsentConditions>,
    /// Each PDC's ε spent on this study (the increments of its cumulative spend its updates recorded here).
    pub(crate) study_epsilon: BTreeMap<String, f64>,
    /// The researcher who signed the manifest, with its signature.
    pub(crate) signed_by: Option<(String, [u8; 64])>,
    /// The fitted federated standardisation: contributors, mean, std.
    pub(crate) fitted: Option<(Vec<String>, Vec<f64>, Vec<f64>)>,
    /// Feature summaries released for the study's standardisation before it was fitted.
    pub(crate) releases: Vec<StatisticsRelease>,
    /// Every aggregated round with its model's hash, in order.
    pub(crate) aggregated: Vec<(u32, Hash)>,
    /// Times the round after the last aggregated one was opened.
    pub(crate) attempts: u32,
    pub(crate) open: Option<OpenProgress>,
    /// The state its `StudyClosed` entry names.
    pub(crate) closed: Option<String>,
}

impl StudyProgress {
    /// The last aggregated round, 0 before the first.
    pub(crate) fn completed(&self) -> u32 {
        self.aggregated.last().map_or(0, |&(round, _)| round)
    }
}

/// The ledger's entries folded into the state they describe.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct LedgerScan {
    /// Registered hospitals and their current keys.
    pub(crate) hospitals: BTreeMap<String, [u8; 32]>,
    /// Declared budgets: dataset, ε, δ.
    pub(crate) budgets: BTreeMap<String, (String, f64, f64)>,
    /// Each PDC's latest cumulative spend.
    pub(crate) spent: BTreeMap<String, (f64, f64)>,
    /// Studies by id.
    pub(crate) studies: BTreeMap<String, StudyProgress>,
}

/// Folds `entries`, in ledger order, into what they say. Entries of unknown studies are ignored (the audit checks
/// the ledger's consistency; recovery only needs its latest word).
pub(crate) fn scan(entries: impl IntoIterator<Item = Entry>) -> LedgerScan {
    let entries: Vec<Entry> = entries.into_iter().collect();
    // Registrations, rotations and revocations fold as the consortium's own membership does.
    let membership = Membership::from_entries(&entries);
    let hospitals = membership.with_role(Role::Hospital).map(|(id, key)| (id.to_owned(), key)).collect();
    let mut scan = LedgerScan { hospitals, ..LedgerScan::default() };
    for entry in entries {
        match entry {
            Entry::ManifestSigned { study_id, researcher_id, signature, .. } => {
                if let Some(study) = scan.studies.get_mut(&study_id) {
                    study.signed_by = Some((researcher_id, signature));
                }
            }
            Entry::BudgetDeclared { pdc_id, dataset, epsilon, delta } => {
                scan.budgets.insert(pdc_id, (dataset, epsilon, delta));
            }
            Entry::StudyCreated { study_id, manifest_hash } => {
                scan.studies.insert(study_id, StudyProgress { manifest_hash, ..StudyProgress::default() });
            }
            Entry::ConsentGranted { study_id, pdc_id, conditions, .. } => {
                if let Some(study) = scan.studies.get_mut(&study_id) {
                    match conditions {
                        Some(conditions) => study.conditions.insert(pdc_id.clone(), conditions),
                        None => study.conditions.remove(&pdc_id),
                    };
                    study.consents.insert(pdc_id);
                }
            }
            Entry::ConsentRevoked { study_id, pdc_id, .. } => {
                if let Some(study) = scan.studies.get_mut(&study_id) {
                    study.conditions.remove(&pdc_id);
                    study.consents.remove(&pdc_id);
                }
            }
            Entry::StatisticsReleased { release, .. } => {
                scan.spent.insert(release.pdc_id.clone(), (release.epsilon, release.delta));
                if let Some(study) = scan.studies.get_mut(&release.scope)
                    && study.fitted.is_none()
                {
                    study.releases.push(release);
                }
            }
            Entry::StandardizationFitted { study_id, contributors, mean, std } => {
                if let Some(study) = scan.studies.get_mut(&study_id) {
                    study.fitted = Some((contributors, mean, std));
                }
            }
            Entry::RoundOpened { study_id, round, participants, model_hash } => {
                if let Some(study) = scan.studies.get_mut(&study_id) {
                    if round == study.completed() + 1 {
                        study.attempts += 1;
                    }
                    study.open = Some(OpenProgress { round, participants, model_hash, ..OpenProgress::default() });
                }
            }
            Entry::ContributionAccepted { contribution, .. } => {
                if let Some(open) = open_round(&mut scan, &contribution.study_id, contribution.round) {
                    let update =
                        AcceptedUpdate { n_examples: contribution.n_examples, update_hash: contribution.update_hash };
                    open.contributions.push((contribution.pdc_id, update));
                }
            }
            Entry::PrivacySpent { study_id, round, pdc_id, epsilon, delta } => {
                let before = scan.spent.get(&pdc_id).map_or(0.0, |&(epsilon, _)| epsilon);
                scan.spent.insert(pdc_id.clone(), (epsilon, delta));
                if let Some(study) = scan.studies.get_mut(&study_id) {
                    *study.study_epsilon.entry(pdc_id.clone()).or_default() += (epsilon - before).max(0.0);
                }
                if let Some(open) = open_round(&mut scan, &study_id, round) {
                    open.spends.insert(pdc_id, (epsilon, delta));
                }
            }
            Entry::UpdateRejected { study_id, round, pdc_id, reason } => {
                // Left-out and suspended updates are part of the round's aggregation, in its snapshot.
                if reason.starts_with(LEFT_OUT_PREFIX) || reason.starts_with(SUSPENDED_PREFIX) {
                    continue;
                }
                if let Some(open) = open_round(&mut scan, &study_id, round) {
                    if reason.starts_with(BUDGET_EXHAUSTED_PREFIX) {
                        open.exhausted.push(pdc_id);
                    } else {
                        open.rejected.push(pdc_id);
                    }
                }
            }
            Entry::RoundAggregated { study_id, round, model_hash, .. } => {
                if let Some(study) = scan.studies.get_mut(&study_id) {
                    study.aggregated.push((round, model_hash));
                    study.open = None;
                    study.attempts = 0;
                }
            }
            Entry::StudyClosed { study_id, state } => {
                if let Some(study) = scan.studies.get_mut(&study_id) {
                    study.closed = Some(state);
                }
            }
            _ => {}
        }
    }
    scan
}

fn open_round<'a>(scan: &'a mut LedgerScan, study_id: &str, round: u32) -> Option<&'a mut OpenProgress> {
    scan.studies.get_mut(study_id)?.open.as_mut().filter(|open| open.round == round)
}

#[cfg(test)]
mod tests {
    use pdc_ledger::signing::Contribution;

    use super::*;

    fn contribution(study: &str, round: u32, pdc: &str) -> Entry {
        Entry::ContributionAccepted {
            contribution: Contribution {
                study_id: study.into(),
                round,
                pdc_id: pdc.into(),
                n_examples: 10,
                n_parameters: 3,
                update_hash: [round as u8; 32],
                train_loss: 0.5,
                privacy: None,
            },
            signature: [0; 64],
        }
    }

    fn opened(round: u32) -> Entry {
        Entry::RoundOpened {
            study_id: "s".into(),
            round,
            participants: vec!["a".into(), "b".into()],
            model_hash: [0; 32],
        }
    }

    fn aggregated(round: u32) -> Entry {
        Entry::RoundAggregated {
            study_id: "s".into(),
            round,
            model_hash: [round as u8; 32],
            contributors: vec!["a".into(), "b".into()],
            metrics: Vec::new(),
        }
    }

    #[test]
    fn the_scan_tracks_rounds_contributions_and_attempts() {
        let mut entries = vec![
            Entry::MemberRegistered { pdc_id: "a".into(), role: Role::Hospital, public_key: [1; 32] },
            Entry::MemberRegistered { pdc_id: "w".into(), role: Role::Witness, public_key: [9; 32] },
            Entry::StudyCreated { study_id: "s".into(), manifest_hash: [7; 32] },
            Entry::ConsentGranted {
                study_id: "s".into(),
                pdc_id: "a".into(),
                manifest_hash: [7; 32],
                signature: [0; 64],
                conditions: Some(ConsentConditions { max_rounds: Some(4), ..ConsentConditions::default() }),
            },
            Entry::ConsentGranted {
                study_id: "s".into(),
                pdc_id: "b".into(),
                manifest_hash: [7; 32],
                signature: [0; 64],
                conditions: Some(ConsentConditions { max_rounds: Some(2), ..ConsentConditions::default() }),
            },
            Entry::ConsentRevoked {
                study_id: "s".into(),
                pdc_id: "b".into(),
                manifest_hash: [7; 32],
                signature: [0; 64],
            },
            opened(1),
            contribution("s", 1, "a"),
            contribution("s", 1, "b"),
            aggregated(1),
            // Round 2's first attempt was abandoned; its second is open with one contribution and a rejection.
            opened(2),
            contribution("s", 2, "b"),
            opened(2),
            contribution("s", 2, "a"),
            Entry::UpdateRejected { study_id: "s".into(), round: 2, pdc_id: "b".into(), reason: "not finite".into() },
            // A contribution to another round or study is not the open round's.
            contribution("s", 1, "b"),
            contribution("t", 2, "b"),
        ];
        let scan = scan(entries.clone());
        assert_eq!(scan.hospitals.keys().collect::<Vec<_>>(), ["a"]);
        let study = &scan.studies["s"];
        assert_eq!(study.consents, BTreeSet::from(["a".to_owned()]));
        // A revoked consent's conditions go with it.
        assert_eq!(study.conditions.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(study.aggregated, vec![(1, [1; 32])]);
        assert_eq!(study.attempts, 2);
        let open = study.open.as_ref().unwrap();
        assert_eq!(open.round, 2);
        assert_eq!(open.contributions.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(open.rejected, ["b"]);
        assert!(study.closed.is_none());

        entries.push(aggregated(2));
        entries.push(Entry::StudyClosed { study_id: "s".into(), state: "finished".into() });
        let study = &super::scan(entries).studies["s"];
        assert_eq!((study.completed(), study.attempts, study.open.is_none()), (2, 0, true));
        assert_eq!(study.closed.as_deref(), Some("finished"));
    }

    #[test]
    fn snapshots_round_trip_and_are_keyed_by_study_and_round() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert!(!store.is_started("s").unwrap());
        store.mark_started("s").unwrap();
        assert!(store.is_started("s").unwrap() && !store.is_started("s2").unwrap());
        let config = crate::aggregation::AggregationConfig::default();
        let snapshot = RoundSnapshot {
            record: RoundRecord {
                round: 3,
                participants: vec!["a".into()],
                contributors: vec!["a".into()],
                validation: pdc_models::Metrics {
                    loss: 0.25,
                    accuracy: Some(0.9),
                    auroc: None,
                    mse: None,
                    n_examples: 10,
                },
                model_hash: [3; 32],
                privacy: vec![("a".into(), 1.5, 1e-6)],
            },
            hospitals: BTreeMap::from([("a".to_owned(), HospitalStats { examples: 10, ..HospitalStats::default() })]),
            exhausted: BTreeSet::new(),
            suspensions: SuspensionTracker::new(3),
            carried: 0.5,
            server_state: ServerState::new(&config, 4).unwrap(),
            central_clip_norm: Some(0.75),
        };
        store.put_round("s", &snapshot).unwrap();
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.round("s", 3).unwrap(), Some(snapshot));
        assert_eq!(store.round("s", 2).unwrap(), None);
        assert_eq!(store.round("s2", 3).unwrap(), None);
        assert!(store.is_started("s").unwrap());
    }
}
