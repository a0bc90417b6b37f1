//! The coordinator's ledger: every study event as a typed entry in the durable Merkle log, and every round sealed
//! by a checkpoint that the coordinator signs and its witnesses co-sign.
//!
//! Entries are appended before the state change they record takes effect, so the log never claims less than
//! happened; a failed append poisons the store (see [`pdc_ledger::store`]) and the change is refused. A
//! checkpoint is signed only after the entries it covers are durable, and a round counts as final only once
//! `quorum` witnesses have co-signed its checkpoint: each witness is sent the note with a consistency proof from
//! the last size it co-signed, and its co-signature is verified before it is counted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use pdc_ledger::checkpoint::{Checkpoint, NoteSignature, SignedCheckpoint};
use pdc_ledger::entry::Entry;
use pdc_ledger::log::SharedLog;
use pdc_ledger::merkle;
use pdc_ledger::store::{MemoryStore, RocksDbStore, Store};
use pdc_ledger::{Hash, Identity, PublicKey};
use pdc_proto::pb;
use pdc_proto::pb::witness_service_client::WitnessServiceClient;

use crate::{Error, Result};

/// The gRPC metadata key under which a witness that refuses with a stale old size says which size it expects.
pub const WITNESS_SIZE_METADATA: &str = "pdc-witness-size";

/// The `meta` key under which [`LogInfo::to_text`] is kept, so that a copy of the ledger folder says whose it is.
pub const LOG_INFO_KEY: &str = "log-info";

/// A witness the coordinator asks to co-sign its checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct WitnessEndpoint {
    /// The key name the witness co-signs under.
    pub name: String,
    /// Where its WitnessService listens, e.g. `http://127.0.0.1:50061`.
    pub url: String,
    /// Its public key, to check its co-signatures.
    pub public_key: PublicKey,
    /// TLS to it (an `https://` url): its pinned certificate, and the coordinator's own to present.
    pub tls: Option<crate::tls::ClientTls>,
}

/// How the coordinator's ledger is named, signed and witnessed.
#[derive(Clone, Debug)]
pub struct LedgerSettings {
    /// The log's origin, the first line of every checkpoint; must name the hash algorithm (`sha3-256`).
    pub origin: String,
    /// The key name the coordinator signs checkpoints under.
    pub key_name: String,
    /// The coordinator's signing key file (created on first start); `None` keeps it under the data folder.
    pub key_file: Option<PathBuf>,
    /// The witnesses.
    pub witnesses: Vec<WitnessEndpoint>,
    /// How many witnesses must co-sign a checkpoint before its round is final.
    pub quorum: usize,
    /// How long one witness call may take.
    pub witness_timeout: Duration,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            origin: "pdc.local/ledger/sha3-256".into(),
            key_name: "pdc.local/coordinator".into(),
            key_file: None,
            witnesses: Vec::new(),
            quorum: 0,
            witness_timeout: Duration::from_secs(5),
        }
    }
}

impl LedgerSettings {
    /// Checks the settings: a quorum the witnesses can reach, distinct witness names, a valid origin.
    pub fn validate(&self) -> Result<()> {
        if self.quorum > self.witnesses.len() {
            return Err(Error::InvalidArgument {
                field: "ledger.quorum",
                detail: format!("quorum {} exceeds the {} witnesses configured", self.quorum, self.witnesses.len()),
            });
        }
        let mut names: Vec<&str> = self.witnesses.iter().map(|w| w.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(Error::InvalidArgument {
                field: "ledger.witnesses",
                detail: format!("witness {} is listed twice", pair[0]),
            });
        }
        // Signing a dummy checkpoint checks the origin and the key name with the ledger's own rules.
        let probe = Checkpoint {
            origin: self.origin.clone(),
            size: 0,
            root: merkle::root(&[]),
            previous: [0; 32],
            timestamp_ms: 0,
        };
        probe
            .sign(&self.key_name, &Identity::from_seed([0; 32]))
            .map_err(|e| Error::InvalidArgument { field: "ledger.origin", detail: e.to_string() })?;
        Ok(())
    }

    /// Checks that the quorum is a majority of the witnesses, so that two disjoint sets of witnesses can never
    /// both make a quorum, and a log cannot have two forks co-signed by honest-looking quorums. A quorum of 0 with
    /// no witnesses stays allowed: a log trusted on its own signature (the demo's and the example's default).
    pub fn check_majority_quorum(&self) -> Result<()> {
        let witnesses = self.witnesses.len();
        if witnesses > 0 && self.quorum * 2 <= witnesses {
            return Err(Error::InvalidArgument {
                field: "ledger.quorum",
                detail: format!(
                    "quorum {} is not a majority of the {witnesses} witnesses configured: it must be at least {}",
                    self.quorum,
                    witnesses / 2 + 1
                ),
            });
        }
        Ok(())
    }
}

/// What an auditor needs to check this ledger: the log's name and key and its witnesses.
#[derive(Clone, Debug)]
pub struct LogInfo {
    /// The log's origin.
    pub origin: String,
    /// The coordinator's key name.
    pub key_name: String,
    /// The coordinator's public key.
    pub public_key: PublicKey,
    /// The witnesses' names and keys.
    pub witnesses: Vec<(String, PublicKey)>,
    /// Co-signatures a checkpoint needs.
    pub quorum: usize,
}

impl LogInfo {
    /// The keys an audit checks this log against.
    pub fn audit_keys(&self) -> pdc_ledger::audit::AuditKeys {
        pdc_ledger::audit::AuditKeys {
            origin: self.origin.clone(),
            log_key_name: self.key_name.clone(),
            log_key: self.public_key,
            witnesses: self.witnesses.clone(),
            quorum: self.quorum,
        }
    }

    /// One `name value` line per field: `origin`, `key_name`, `public_key` (hex), `quorum`, then one
    /// `witness <name> <hex key>` line per witness.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "origin {}\nkey_name {}\npublic_key {}\nquorum {}\n",
            self.origin,
            self.key_name,
            hex::encode(self.public_key.to_bytes()),
            self.quorum
        );
        for (name, key) in &self.witnesses {
            text.push_str(&format!("witness {name} {}\n", hex::encode(key.to_bytes())));
        }
        text
    }

    /// Parses [`LogInfo::to_text`]'s format; errors name the line.
    pub fn from_text(text: &str) -> Result<Self> {
        let bad = |line: usize, detail: &str| Error::Ledger(format!("log info line {line}: {detail}"));
        let key = |line: usize, hex_key: &str| {
            let bytes = hex::decode(hex_key).map_err(|e| bad(line, &e.to_string()))?;
            PublicKey::from_bytes(&bytes).map_err(|e| bad(line, &e.to_string()))
        };
        let (mut origin, mut key_name, mut public_key, mut quorum) = (None, None, None, None);
        let mut witnesses = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let (name, value) = line.split_once(' ').ok_or_else(|| bad(number, "expected `name value`"))?;
            match name {
                "origin" => origin = Some(value.to_owned()),
                "key_name" => key_name = Some(value.to_owned()),
                "public_key" => public_key = Some(key(number, value)?),
                "quorum" => quorum = Some(value.parse().map_err(|_| bad(number, "quorum is not a number"))?),
                "witness" => {
                    let (witness, hex_key) =
                        value.split_once(' ').ok_or_else(|| bad(number, "expected `witness <name> <key>`"))?;
                    witnesses.push((witness.to_owned(), key(number, hex_key)?));
                }
                other => return Err(bad(number, &format!("unknown field `{other}`"))),
            }
        }
        Ok(Self {
            origin: origin.ok_or_else(|| bad(0, "no origin"))?,
            key_name: key_name.ok_or_else(|| bad(0, "no key_name"))?,
            public_key: public_key.ok_or_else(|| bad(0, "no public_key"))?,
            witnesses,
            quorum: quorum.ok_or_else(|| bad(0, "no quorum"))?,
        })
    }
}

/// The coordinator's ledger.
pub struct Ledger {
    log: SharedLog,
    identity: Identity,
    settings: LedgerSettings,
    /// The last size each witness is known to have co-signed; learned again from a witness that says otherwise.
    witness_sizes: Mutex<BTreeMap<String, u64>>,
    /// Held while a checkpoint is signed, witnessed and stored, so checkpoints chain one after another.
    sealing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("origin", &self.settings.origin).field("size", &self.size()).finish()
    }
}

impl Ledger {
    /// Opens (creating) the RocksDB ledger under `dir`, checks its stored root against its last checkpoint, and
    /// records in it whose log it is ([`LOG_INFO_KEY`]).
    ///
    /// The checks come first: a start refused (a checkpoint signed by another key, a root that differs) writes
    /// nothing, so the ledger still says whose it is and an auditor holding the right key still verifies it.
    pub fn open(dir: &Path, identity: Identity, settings: LedgerSettings) -> Result<Self> {
        settings.validate()?;
        let mut store = RocksDbStore::open(dir).map_err(ledger_error)?;
        check_last_checkpoint(&store, &settings.key_name, &identity.public_key())?;
        let info = Self::info_of(&identity, &settings).to_text();
        store.put_meta(LOG_INFO_KEY, info.as_bytes()).map_err(ledger_error)?;
        Ok(Self::from_store(Box::new(store), identity, settings))
    }

    /// A ledger in memory, for tests.
    pub fn in_memory(identity: Identity, settings: LedgerSettings) -> Result<Self> {
        settings.validate()?;
        Ok(Self::from_store(Box::new(MemoryStore::new()), identity, settings))
    }

    fn from_store(store: Box<dyn Store + Send>, identity: Identity, settings: LedgerSettings) -> Self {
        Self {
            log: SharedLog::new(store),
            identity,
            settings,
            witness_sizes: Mutex::default(),
            sealing: tokio::sync::Mutex::default(),
        }
    }

    fn info_of(identity: &Identity, settings: &LedgerSettings) -> LogInfo {
        LogInfo {
            origin: settings.origin.clone(),
            key_name: settings.key_name.clone(),
            public_key: identity.public_key(),
            witnesses: settings.witnesses.iter().map(|w| (w.name.clone(), w.public_key)).collect(),
            quorum: settings.quorum,
        }
    }

    /// What an auditor needs to check this ledger.
    pub fn info(&self) -> LogInfo {
        Self::info_of(&self.identity, &self.settings)
    }

    /// The keys an audit of this ledger checks against (as the coordinator states them; an auditor pins its own).
    pub fn audit_keys(&self) -> pdc_ledger::audit::AuditKeys {
        self.info().audit_keys()
    }

    /// Appends `entries` durably, batched with concurrent appends (group commit); returns the index of the first.
    pub fn record(&self, entries: &[Entry]) -> Result<u64> {
        let encoded: Vec<Vec<u8>> = entries.iter().map(Entry::encode).collect();
        let range = self.log.append_all(encoded).map_err(ledger_error)?;
        Ok(range.start)
    }

    /// The number of entries.
    pub fn size(&self) -> u64 {
        self.log.size()
    }

    /// Entry `index`'s canonical bytes.
    pub fn entry(&self, index: u64) -> Result<Vec<u8>> {
        self.log.entry(index).map_err(ledger_error)
    }

    /// Every entry, decoded, with its index.
    pub fn entries(&self) -> Result<Vec<(u64, Entry)>> {
        (0..self.log.size())
            .map(|index| {
                let bytes = self.log.entry(index).map_err(ledger_error)?;
                let entry = Entry::decode(&bytes).map_err(|e| Error::Ledger(format!("entry {index}: {e}")))?;
                Ok((index, entry))
            })
            .collect()
    }

    /// The checkpoint of `size`, or the latest when `size` is `None`.
    pub fn checkpoint(&self, size: Option<u64>) -> Result<Option<String>> {
        let note = match size {
            Some(size) => self.log.checkpoint(size).map_err(ledger_error)?.map(|note| (size, note)),
            None => self.log.latest_checkpoint().map_err(ledger_error)?,
        };
        note.map(|(size, note)| note_text(size, note)).transpose()
    }

    /// Every stored checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<String>> {
        let notes = self.log.checkpoints().map_err(ledger_error)?;
        notes.into_iter().map(|(size, note)| note_text(size, note)).collect()
    }

    /// RFC 9162 inclusion proof of entry `index` in the tree of `size`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        let log_size = self.log.size();
        if size > log_size || index >= size {
            return Err(Error::InvalidArgument {
                field: "index",
                detail: format!("no entry {index} in a tree of size {size} (the log has {log_size})"),
            });
        }
        self.log.inclusion_proof(index, size).map_err(ledger_error)
    }

    /// RFC 9162 consistency proof from `old_size` to `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>> {
        let log_size = self.log.size();
        if old_size > new_size || new_size > log_size {
            return Err(Error::InvalidArgument {
                field: "old_size",
                detail: format!("need old size {old_size} ≤ new size {new_size} ≤ log size {log_size}"),
            });
        }
        self.log.consistency_proof(old_size, new_size).map_err(ledger_error)
    }

    /// Runs `read` on the store, e.g. to audit or export it.
    pub fn with_store<T>(&self, read: impl FnOnce(&dyn Store) -> T) -> T {
        self.log.with_store(read)
    }

    /// Signs the log as it is now, gathers co-signatures until `quorum` witnesses have signed (retrying with
    /// back-off), and stores the checkpoint. Returns the stored note. A log whose latest checkpoint already covers
    /// every entry is not sealed again.
    pub async fn seal(&self, timestamp_ms: u64) -> Result<String> {
        let _sealing = self.sealing.lock().await;
        if let Some((size, note)) = self.log.latest_checkpoint().map_err(ledger_error)?
            && size == self.log.size()
        {
            return note_text(size, note);
        }
        let checkpoint = self.log.prepare_checkpoint(&self.settings.origin, timestamp_ms).map_err(ledger_error)?;
        let mut signed =
            checkpoint.sign(&self.settings.key_name, &self.identity).map_err(|e| Error::Ledger(e.to_string()))?;
        let mut cosigned: BTreeMap<String, NoteSignature> = BTreeMap::new();
        let mut delay = Duration::from_millis(50);
        while cosigned.len() < self.settings.quorum {
            for witness in &self.settings.witnesses {
                if cosigned.contains_key(&witness.name) {
                    continue;
                }
                match self.ask_witness(witness, &signed).await {
                    Ok(signature) => {
                        cosigned.insert(witness.name.clone(), signature);
                    }
                    Err(error) => tracing::warn!(witness = %witness.name, %error, "witness did not co-sign"),
                }
            }
            if cosigned.len() < self.settings.quorum {
                tracing::warn!(have = cosigned.len(), need = self.settings.quorum, "waiting for the witness quorum");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
        let size = signed.checkpoint.size;
        let mut sizes = self.witness_sizes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for name in cosigned.keys() {
            sizes.insert(name.clone(), size);
        }
        drop(sizes);
        signed.signatures.extend(cosigned.into_values());
        self.log.put_checkpoint(&signed).map_err(ledger_error)?;
        Ok(signed.to_note())
    }

    /// Sends `signed` to one witness and checks the co-signature it returns.
    async fn ask_witness(&self, witness: &WitnessEndpoint, signed: &SignedCheckpoint) -> Result<NoteSignature> {
        let known =
            self.witness_sizes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&witness.name).copied();
        let mut old_size = known.unwrap_or(0).min(signed.checkpoint.size);
        let mut endpoint = tonic::transport::Endpoint::from_shared(witness.url.clone())
            .map_err(|e| Error::Ledger(format!("witness {} url: {e}", witness.name)))?
            .connect_timeout(self.settings.witness_timeout)
            .timeout(self.settings.witness_timeout);
        if let Some(tls) = &witness.tls {
            endpoint = endpoint
                .tls_config(tls.client_config())
                .map_err(|e| Error::Ledger(format!("witness {} TLS: {e}", witness.name)))?;
        }
        let channel = endpoint.connect().await.map_err(|e| Error::Ledger(format!("witness {}: {e}", witness.name)))?;
        let mut client = WitnessServiceClient::new(channel);
        // At most one retry: a witness that co-signed more than this coordinator remembers (after a restart) says
        // which size it holds.
        for _ in 0..2 {
            let proof = self.consistency_proof(old_size, signed.checkpoint.size)?;
            let request = pb::AddCheckpointRequest {
                old_size,
                note: signed.to_note(),
                proof: proof.iter().map(|hash| hash.to_vec()).collect(),
            };
            match client.add_checkpoint(request).await {
                Ok(response) => return check_cosignature(witness, signed, &response.into_inner().cosignature),
                Err(status) => {
                    let expected = status
                        .metadata()
                        .get(WITNESS_SIZE_METADATA)
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse::<u64>().ok());
                    match expected {
                        Some(size) if size != old_size && size <= signed.checkpoint.size => old_size = size,
                        _ => {
                            return Err(Error::Ledger(format!(
                                "witness {} refused: {:?}: {}",
                                witness.name,
                                status.code(),
                                status.message()
                            )));
                        }
                    }
                }
            }
        }
        Err(Error::Ledger(format!("witness {} kept refusing the old size", witness.name)))
    }
}

/// Checks one witness's co-signature line for `signed`.
fn check_cosignature(witness: &WitnessEndpoint, signed: &SignedCheckpoint, line: &str) -> Result<NoteSignature> {
    // The co-signature is one note signature line; parsing the note with it appended checks its syntax.
    let line = line.trim_end_matches('\n');
    if line.contains('\n') {
        return Err(Error::Ledger(format!("witness {} sent more than one line", witness.name)));
    }
    let with_line = format!("{}{line}\n", signed.to_note());
    let parsed = SignedCheckpoint::parse(&with_line)
        .map_err(|e| Error::Ledger(format!("witness {} sent a malformed co-signature: {e}", witness.name)))?;
    let signature = parsed.signatures.last().cloned().expect("the appended line parsed");
    let alone = SignedCheckpoint { checkpoint: signed.checkpoint.clone(), signatures: vec![signature.clone()] };
    alone
        .verify(&witness.name, &witness.public_key)
        .map_err(|e| Error::Ledger(format!("witness {}'s co-signature does not verify: {e}", witness.name)))?;
    Ok(signature)
}

fn note_text(size: u64, note: Vec<u8>) -> Result<String> {
    String::from_utf8(note).map_err(|_| Error::Ledger(format!("checkpoint {size} is not UTF-8")))
}

fn parse_note(size: u64, note: &[u8]) -> Result<SignedCheckpoint> {
    let text = std::str::from_utf8(note).map_err(|_| Error::Ledger(format!("checkpoint {size} is not UTF-8")))?;
    SignedCheckpoint::parse(text).map_err(|e| Error::Ledger(format!("checkpoint {size}: {e}")))
}

/// Checks that `store`'s last checkpoint is signed as `key_name` by `key` and matches the stored root; reads only.
fn check_last_checkpoint(store: &dyn Store, key_name: &str, key: &PublicKey) -> Result<()> {
    let Some((size, note)) = store.latest_checkpoint().map_err(ledger_error)? else { return Ok(()) };
    let signed = parse_note(size, &note)?;
    signed
        .verify(key_name, key)
        .map_err(|e| Error::Ledger(format!("checkpoint {size} is not signed by this coordinator's key: {e}")))?;
    let root = store.root_at(size).map_err(ledger_error)?;
    if root != signed.checkpoint.root {
        return Err(Error::Ledger(format!("the stored log's root at size {size} differs from its checkpoint")));
    }
    Ok(())
}

fn ledger_error(error: pdc_ledger::store::StoreError) -> Error {
    Error::Ledger(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(witnesses: usize, quorum: usize) -> LedgerSettings {
        let witnesses = (0..witnesses)
            .map(|i| WitnessEndpoint {
                name: format!("w{i}"),
                url: "http://127.0.0.1:9".into(),
                public_key: Identity::from_seed([i as u8; 32]).public_key(),
                tls: None,
            })
            .collect();
        LedgerSettings { witnesses, quorum, ..LedgerSettings::default() }
    }

    #[tokio::test]
    async fn a_start_refused_for_another_key_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let owner = Identity::from_seed([7; 32]);
        let ledger = Ledger::open(&path, Identity::from_seed([7; 32]), LedgerSettings::default()).unwrap();
        let closed = Entry::StudyClosed { study_id: "s".into(), state: "finished".into() };
        ledger.record(&[closed]).unwrap();
        ledger.seal(1_000).await.unwrap();
        drop(ledger);
        let meta = || {
            let store = RocksDbStore::open_for_audit(&path).unwrap();
            (store.meta(LOG_INFO_KEY).unwrap(), store.size(), store.checkpoints().unwrap().len())
        };
        let before = meta();
        assert!(before.0.is_some() && before.1 == 1 && before.2 == 1, "{before:?}");

        // Started with another key, the coordinator refuses, and the ledger still says it is the owner's.
        let error = Ledger::open(&path, Identity::from_seed([8; 32]), LedgerSettings::default()).unwrap_err();
        assert!(error.to_string().contains("checkpoint 1 is not signed by this coordinator's key"), "{error}");
        assert_eq!(meta(), before);
        let info = LogInfo::from_text(std::str::from_utf8(before.0.as_deref().unwrap()).unwrap()).unwrap();
        assert_eq!(info.public_key, owner.public_key());

        // The owner's key still opens it.
        assert_eq!(Ledger::open(&path, owner, LedgerSettings::default()).unwrap().size(), 1);
    }

    #[test]
    fn a_quorum_must_be_a_majority_of_the_witnesses_or_zero_of_none() {
        for (witnesses, quorum) in [(0, 0), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3)] {
            assert!(settings(witnesses, quorum).check_majority_quorum().is_ok(), "{quorum} of {witnesses}");
        }
        for (witnesses, quorum, least) in [(1, 0, 1), (2, 1, 2), (3, 1, 2), (4, 2, 3), (5, 2, 3)] {
            let error = settings(witnesses, quorum).check_majority_quorum().expect_err("a minority");
            assert_eq!(
                error.to_string(),
                format!(
                    "invalid ledger.quorum: quorum {quorum} is not a majority of the {witnesses} witnesses configured: \
                     it must be at least {least}"
                )
            );
        }
    }
}
