//! The gRPC edge of the ledger: `AuditService` (read-only, for governance boards) over the coordinator's
//! [`Ledger`], and `WitnessService` over a [`pdc_ledger::witness::Witness`].
//!
//! Protobuf types stop here, as in [`crate::server`]. Every request is checked against the log's current size
//! before anything is read, and every refusal is a precise status; nothing here writes to the ledger.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use pdc_ledger::Hash;
use pdc_ledger::checkpoint::SignedCheckpoint;
use pdc_ledger::entry::Entry;
use pdc_ledger::witness::{self, Witness, WitnessError};
use pdc_proto::pb;
use pdc_proto::pb::audit_service_server::AuditService;
use pdc_proto::pb::witness_service_server::WitnessService;
use tonic::{Code, Request, Response, Status};

use crate::ledger::{Ledger, WITNESS_SIZE_METADATA};
use crate::{Error, Result};

/// The most entries one `GetEntries` call returns; auditors page through larger logs.
pub const MAX_ENTRIES_PER_CALL: u64 = 65_536;
/// The largest consistency proof a witness accepts, in hashes (a proof has at most 2·log2(size) + 1).
const MAX_PROOF_HASHES: usize = 130;
/// The largest checkpoint note a witness accepts, in bytes.
const MAX_NOTE_BYTES: usize = 16 << 10;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The read-only AuditService over a coordinator's ledger.
#[derive(Clone, Debug)]
pub struct AuditApi {
    ledger: Arc<Ledger>,
}

impl AuditApi {
    /// Serves `ledger`.
    pub fn new(ledger: Arc<Ledger>) -> Self {
        Self { ledger }
    }

    /// The decoded entries of `study_id`, or `NotFound` when no such study was ever created.
    fn study_entries(&self, study_id: &str) -> Result<Vec<(u64, Entry)>> {
        let entries: Vec<(u64, Entry)> =
            self.ledger.entries()?.into_iter().filter(|(_, entry)| entry.study_id() == Some(study_id)).collect();
        if !entries.iter().any(|(_, entry)| matches!(entry, Entry::StudyCreated { .. })) {
            return Err(Error::UnknownStudy(study_id.to_owned()));
        }
        Ok(entries)
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn get_log_info(&self, _: Request<pb::LogInfoRequest>) -> Result<Response<pb::LogInfo>, Status> {
        let info = self.ledger.info();
        Ok(Response::new(pb::LogInfo {
            origin: info.origin,
            key_name: info.key_name,
            public_key: info.public_key.to_bytes().to_vec(),
            witnesses: info
                .witnesses
                .into_iter()
                .map(|(name, key)| pb::WitnessKey { name, public_key: key.to_bytes().to_vec() })
                .collect(),
            quorum: info.quorum as u32,
            size: self.ledger.size(),
        }))
    }

    async fn get_checkpoint(
        &self,
        request: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        let size = request.into_inner().size;
        let note = self.ledger.checkpoint((size != 0).then_some(size))?;
        match note {
            Some(note) => Ok(Response::new(pb::Checkpoint { note })),
            None if size == 0 => Err(Status::not_found("the ledger has no checkpoint yet")),
            None => Err(Status::not_found(format!("no checkpoint of size {size}"))),
        }
    }

    type ListCheckpointsStream = ResponseStream<pb::Checkpoint>;

    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<Self::ListCheckpointsStream>, Status> {
        let notes = self.ledger.checkpoints()?;
        Ok(Response::new(Box::pin(futures::stream::iter(notes.into_iter().map(|note| Ok(pb::Checkpoint { note }))))))
    }

    type GetEntriesStream = ResponseStream<pb::Entry>;

    async fn get_entries(
        &self,
        request: Request<pb::EntriesRequest>,
    ) -> Result<Response<Self::GetEntriesStream>, Status> {
        let pb::EntriesRequest { start, end } = request.into_inner();
        let size = self.ledger.size();
        if start > end || end > size {
            return Err(Status::invalid_argument(format!(
                "entry range [{start}, {end}) is not within the log of {size} entries"
            )));
        }
        if end - start > MAX_ENTRIES_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "entry range [{start}, {end}) holds more than {MAX_ENTRIES_PER_CALL} entries; ask in pages"
            )));
        }
        let ledger = Arc::clone(&self.ledger);
        let stream = futures::stream::iter(start..end)
            .map(move |index| ledger.entry(index).map(|data| pb::Entry { index, data }).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let pb::InclusionProofRequest { index, tree_size } = request.into_inner();
        let proof = self.ledger.inclusion_proof(index, tree_size)?;
        Ok(Response::new(pb::InclusionProof { index, tree_size, hashes: hashes_to_pb(&proof) }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        let pb::ConsistencyProofRequest { old_size, new_size } = request.into_inner();
        let proof = self.ledger.consistency_proof(old_size, new_size)?;
        Ok(Response::new(pb::ConsistencyProof { old_size, new_size, hashes: hashes_to_pb(&proof) }))
    }

    async fn get_rewards(&self, request: Request<pb::StudyQuery>) -> Result<Response<pb::RewardsReport>, Status> {
        let entries = self.study_entries(&request.into_inner().study_id)?;
        let mut utilities = std::collections::BTreeMap::new();
        let mut rewards = Vec::new();
        for (_, entry) in &entries {
            match entry {
                Entry::UtilityScores { round, scores, .. } => {
                    for (pdc_id, score) in scores {
                        utilities.insert((*round, pdc_id.clone()), *score);
                    }
                }
                Entry::RewardPaid { round, pdc_id, amount, .. } => rewards.push(pb::Reward {
                    round: *round,
                    pdc_id: pdc_id.clone(),
                    utility: utilities.get(&(*round, pdc_id.clone())).copied().unwrap_or(0.0),
                    amount: *amount,
                }),
                _ => {}
            }
        }
        Ok(Response::new(pb::RewardsReport { rewards }))
    }

    async fn get_privacy_spend(
        &self,
        request: Request<pb::StudyQuery>,
    ) -> Result<Response<pb::PrivacySpendReport>, Status> {
        let entries = self.study_entries(&request.into_inner().study_id)?;
        let spends = entries
            .iter()
            .filter_map(|(_, entry)| match entry {
                Entry::PrivacySpent { round, pdc_id, epsilon, delta, .. } => {
                    Some(pb::PrivacySpend { pdc_id: pdc_id.clone(), round: *round, epsilon: *epsilon, delta: *delta })
                }
                // A feature summary for the study's standardisation is a spend before its first round.
                Entry::StatisticsReleased { release, .. } => Some(pb::PrivacySpend {
                    pdc_id: release.pdc_id.clone(),
                    round: 0,
                    epsilon: release.epsilon,
                    delta: release.delta,
                }),
                _ => None,
            })
            .collect();
        Ok(Response::new(pb::PrivacySpendReport { spends }))
    }

    async fn get_provenance(&self, request: Request<pb::StudyQuery>) -> Result<Response<pb::Provenance>, Status> {
        let study_id = request.into_inner().study_id;
        let entries = self.study_entries(&study_id)?;
        let mut provenance = pb::Provenance { study_id, ..Default::default() };
        for (_, entry) in &entries {
            match entry {
                Entry::StudyCreated { manifest_hash, .. } => provenance.manifest_hash = hex::encode(manifest_hash),
                Entry::RoundAggregated { model_hash, .. } => {
                    provenance.round_model_hashes.push(hex::encode(model_hash))
                }
                Entry::ContributionAccepted { contribution, .. } => {
                    provenance.update_hashes.push(hex::encode(contribution.update_hash))
                }
                _ => {}
            }
        }
        provenance.final_checkpoint = self.ledger.checkpoint(None)?.map(|note| pb::Checkpoint { note });
        Ok(Response::new(provenance))
    }
}

fn hashes_to_pb(hashes: &[Hash]) -> Vec<Vec<u8>> {
    hashes.iter().map(|hash| hash.to_vec()).collect()
}

/// The WitnessService: co-signs a log's checkpoints that are consistent with the last one it co-signed, and
/// saves what it co-signed (atomically) before answering.
#[derive(Debug)]
pub struct WitnessApi {
    witness: Mutex<Witness>,
    state_path: PathBuf,
}

impl WitnessApi {
    /// A witness whose state is saved at `state_path` (loaded by the caller with
    /// [`pdc_ledger::witness::load_state`]).
    pub fn new(witness: Witness, state_path: PathBuf) -> Self {
        Self { witness: Mutex::new(witness), state_path }
    }

    /// Handles one AddCheckpoint request; pure of gRPC apart from the status it returns.
    pub fn add_checkpoint(&self, request: pb::AddCheckpointRequest) -> Result<String, Status> {
        if request.note.len() > MAX_NOTE_BYTES {
            return Err(Status::resource_exhausted(format!(
                "checkpoint note of {} bytes exceeds {MAX_NOTE_BYTES}",
                request.note.len()
            )));
        }
        if request.proof.len() > MAX_PROOF_HASHES {
            return Err(Status::invalid_argument(format!(
                "consistency proof of {} hashes is longer than any valid proof ({MAX_PROOF_HASHES})",
                request.proof.len()
            )));
        }
        let proof = request
            .proof
            .iter()
            .enumerate()
            .map(|(i, hash)| {
                Hash::try_from(hash.as_slice()).map_err(|_| {
                    Status::invalid_argument(format!("proof hash {i} has {} bytes, expected 32", hash.len()))
                })
            })
            .collect::<Result<Vec<Hash>, Status>>()?;
        let mut witness = self.witness.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let signature = witness.add_checkpoint(&request.note, request.old_size, &proof).map_err(|error| {
            let code = match &error {
                WitnessError::Malformed(_) => Code::InvalidArgument,
                WitnessError::UnknownLog { .. } => Code::NotFound,
                WitnessError::BadSignature { .. } => Code::Unauthenticated,
                WitnessError::StaleOldSize { .. } => Code::FailedPrecondition,
                WitnessError::SizeDecreased { .. } => Code::OutOfRange,
                WitnessError::SameSizeDifferentRoot { .. } => Code::AlreadyExists,
                WitnessError::InconsistentProof { .. } => Code::DataLoss,
                WitnessError::CannotSign(_) => Code::Internal,
            };
            let mut status = Status::new(code, format!("{}: {error}", error.code()));
            if let WitnessError::StaleOldSize { expected, .. } = error
                && let Ok(value) = expected.to_string().parse()
            {
                status.metadata_mut().insert(WITNESS_SIZE_METADATA, value);
            }
            status
        })?;
        // The co-signature is released only once the state that remembers it is on disk. If saving fails the
        // witness keeps the newer state in memory: it then refuses more, never less, than it would after a restart.
        witness::save_state(&self.state_path, witness.state())
            .map_err(|error| Status::internal(format!("cannot save the witness state: {error}")))?;
        let parsed = SignedCheckpoint::parse(&request.note).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let line = SignedCheckpoint { checkpoint: parsed.checkpoint, signatures: vec![signature] }.to_note();
        let line = line.lines().last().unwrap_or_default().to_owned();
        Ok(line)
    }
}

#[tonic::async_trait]
impl WitnessService for WitnessApi {
    async fn add_checkpoint(
        &self,
        request: Request<pb::AddCheckpointRequest>,
    ) -> Result<Response<pb::AddCheckpointResponse>, Status> {
        let cosignature = WitnessApi::add_checkpoint(self, request.into_inner())?;
        Ok(Response::new(pb::AddCheckpointResponse { cosignature }))
    }
}
