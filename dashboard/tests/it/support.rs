//! A fixed ledger written with the ledger crate's own store, real Ed25519 keys and a witness that checks
//! consistency before co-signing; the dashboard served on 127.0.0.1:0 with a fixed clock; and a small HTTP/1.1
//! client over hyper's own connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use pdc_coordinator::ledger::{LOG_INFO_KEY, LogInfo};
use pdc_dashboard::server::Dashboard;
use pdc_dashboard::source::{Source, TrustPolicy};
use pdc_dashboard::time::Clock;
use pdc_ledger::audit::AuditKeys;
use pdc_ledger::checkpoint::Checkpoint;
use pdc_ledger::entry::{Entry, Role};
use pdc_ledger::merkle::{self, MerkleTree};
use pdc_ledger::signing::{self, ConsentAction, ConsentConditions, Contribution, PrivacyClaim};
use pdc_ledger::store::{RocksDbStore, Store};
use pdc_ledger::witness::{TrustedLog, Witness, WitnessConfig, WitnessState};
use pdc_ledger::{Identity, sha3_256};

pub const ORIGIN: &str = "pdc.test/ledger/sha3-256";
pub const LOG_KEY: &str = "pdc.test/log";
pub const WITNESS_KEY: &str = "witness.test/w1";
pub const STUDY: &str = "sepsis-2026";
pub const RESEARCHER: &str = "dr-lee";
pub const HOSPITALS: [&str; 3] = ["h1", "h2", "h3"];
pub const EPSILON_BUDGET: f64 = 4.0;
pub const DELTA: f64 = 1e-5;
pub const ROUND_BUDGET: f64 = 100.0;
/// The first checkpoint's time; each later one is a minute on.
pub const FIRST_SEAL_MS: u64 = 1_767_000_060_000;
/// The dashboard's clock in the tests: an hour after the first checkpoint.
pub const NOW_MS: u64 = FIRST_SEAL_MS + 3_600_000;

pub fn log_identity() -> Identity {
    Identity::from_seed([1; 32])
}

pub fn witness_identity() -> Identity {
    Identity::from_seed([2; 32])
}

pub fn researcher() -> Identity {
    Identity::from_seed([3; 32])
}

pub fn hospital(pdc_id: &str) -> Identity {
    let position = HOSPITALS.iter().position(|h| *h == pdc_id).expect("a known hospital") as u8;
    Identity::from_seed([10 + position; 32])
}

/// h1's key after its rotation.
pub fn rotated_h1() -> Identity {
    Identity::from_seed([20; 32])
}

pub fn keys() -> AuditKeys {
    AuditKeys {
        origin: ORIGIN.into(),
        log_key_name: LOG_KEY.into(),
        log_key: log_identity().public_key(),
        witnesses: vec![(WITNESS_KEY.into(), witness_identity().public_key())],
        quorum: 1,
    }
}

/// The trust policy of a board that pinned the log's key and the witness.
pub fn pinned_policy() -> TrustPolicy {
    TrustPolicy {
        log_key: Some(log_identity().public_key()),
        witnesses: vec![(WITNESS_KEY.into(), witness_identity().public_key())],
        quorum: Some(1),
    }
}

pub fn manifest_hash() -> [u8; 32] {
    sha3_256(b"manifest of sepsis-2026")
}

/// Each hospital's cumulative ε after `round` (rounds 1 and 2 are trained with local DP).
pub fn epsilon_after(pdc: &str, round: u32) -> f64 {
    let per_round = match pdc {
        "h1" => 0.5,
        "h2" => 0.75,
        _ => 1.0,
    };
    per_round * f64::from(round)
}

fn contribution(round: u32, pdc_id: &str, signer: &Identity, private: bool) -> Entry {
    let contribution = Contribution {
        study_id: STUDY.into(),
        round,
        pdc_id: pdc_id.into(),
        n_examples: 100 + u64::from(round),
        n_parameters: 42,
        update_hash: sha3_256(format!("update {round} {pdc_id}").as_bytes()),
        train_loss: if private { 0.0 } else { 0.25 },
        privacy: private.then(|| PrivacyClaim {
            dataset: format!("{pdc_id}/icu.csv"),
            noise_multiplier: 1.1,
            sampling_rate: 0.01,
            steps: 50,
            clip_norm: 1.0,
            epsilon: epsilon_after(pdc_id, round),
            delta: DELTA,
        }),
    };
    let signature = signer.sign(&contribution.signing_bytes());
    Entry::ContributionAccepted { contribution, signature }
}

/// The study, batch by batch; every batch is sealed by a checkpoint except the consents, so a checkpoint seals
/// two batches there.
pub fn batches() -> Vec<(Vec<Entry>, bool)> {
    let mut batches = Vec::new();
    let mut setup = vec![
        Entry::MemberRegistered {
            pdc_id: "coordinator".into(),
            role: Role::Coordinator,
            public_key: log_identity().public_key().to_bytes(),
        },
        Entry::MemberRegistered {
            pdc_id: RESEARCHER.into(),
            role: Role::Researcher,
            public_key: researcher().public_key().to_bytes(),
        },
    ];
    for h in HOSPITALS {
        setup.push(Entry::MemberRegistered {
            pdc_id: h.into(),
            role: Role::Hospital,
            public_key: hospital(h).public_key().to_bytes(),
        });
        setup.push(Entry::BudgetDeclared {
            pdc_id: h.into(),
            dataset: format!("{h}/icu.csv"),
            epsilon: EPSILON_BUDGET,
            delta: DELTA,
        });
    }
    let (old, new) = (hospital("h1").public_key().to_bytes(), rotated_h1().public_key().to_bytes());
    setup.push(Entry::KeyRotated {
        pdc_id: "h1".into(),
        old_key: old,
        new_key: new,
        signature: hospital("h1").sign(&signing::rotate_message("h1", &old, &new)),
    });
    setup.push(Entry::StudyCreated { study_id: STUDY.into(), manifest_hash: manifest_hash() });
    setup.push(Entry::ManifestSigned {
        study_id: STUDY.into(),
        researcher_id: RESEARCHER.into(),
        manifest_hash: manifest_hash(),
        signature: researcher().sign(&signing::manifest_message(RESEARCHER, &manifest_hash())),
    });
    batches.push((setup, true));

    let conditions = ConsentConditions { max_rounds: Some(5), max_epsilon: Some(3.0), expires_at_ms: None };
    let mut consents = Vec::new();
    for h in HOSPITALS {
        let signer = if h == "h1" { rotated_h1() } else { hospital(h) };
        let conditional = h == "h2";
        let message = if conditional {
            signing::conditional_consent_message(STUDY, &manifest_hash(), &conditions)
        } else {
            signing::consent_message(ConsentAction::Grant, STUDY, &manifest_hash())
        };
        consents.push(Entry::ConsentGranted {
            study_id: STUDY.into(),
            pdc_id: h.into(),
            manifest_hash: manifest_hash(),
            signature: signer.sign(&message),
            conditions: conditional.then_some(conditions),
        });
    }
    batches.push((consents, false));

    for round in 1..=3u32 {
        let private = round <= 2;
        let mut entries = vec![Entry::RoundOpened {
            study_id: STUDY.into(),
            round,
            participants: HOSPITALS.iter().map(|h| h.to_string()).collect(),
            model_hash: sha3_256(format!("model {}", round - 1).as_bytes()),
        }];
        // Round 2: h3's update is rejected. Rounds 1 and 3: h3's is accepted but left out of the aggregate as flagged.
        let contributors: Vec<&str> = if round == 2 { vec!["h1", "h2"] } else { HOSPITALS.to_vec() };
        for h in &contributors {
            let signer = if *h == "h1" { rotated_h1() } else { hospital(h) };
            entries.push(contribution(round, h, &signer, private));
            if private {
                entries.push(Entry::PrivacySpent {
                    study_id: STUDY.into(),
                    round,
                    pdc_id: h.to_string(),
                    epsilon: epsilon_after(h, round),
                    delta: DELTA,
                });
            }
        }
        if round == 2 {
            entries.push(Entry::UpdateRejected {
                study_id: STUDY.into(),
                round,
                pdc_id: "h3".into(),
                reason: "update norm 41.2 above the bound 10".into(),
            });
        }
        let aggregated: Vec<String> = ["h1", "h2"].iter().map(|h| h.to_string()).collect();
        entries.push(Entry::RoundAggregated {
            study_id: STUDY.into(),
            round,
            model_hash: sha3_256(format!("model {round}").as_bytes()),
            contributors: aggregated.clone(),
            metrics: vec![("auroc".into(), 0.7 + 0.05 * f64::from(round)), ("loss".into(), 0.6 / f64::from(round))],
        });
        let shares = [("h1", 0.6), ("h2", 0.4)];
        entries.push(Entry::UtilityScores {
            study_id: STUDY.into(),
            round,
            scores: shares.iter().map(|(h, s)| (h.to_string(), s / 10.0 * f64::from(round))).collect(),
            method: "shapley-exact".into(),
            seed: u64::from(round),
        });
        entries.push(Entry::RewardsAllotted {
            study_id: STUDY.into(),
            round,
            budget: ROUND_BUDGET,
            carried_over: false,
        });
        for (h, share) in shares {
            entries.push(Entry::RewardPaid {
                study_id: STUDY.into(),
                round,
                pdc_id: h.into(),
                amount: share * ROUND_BUDGET,
            });
        }
        batches.push((entries, true));
    }
    batches.push((
        vec![
            Entry::ConsentRevoked {
                study_id: STUDY.into(),
                pdc_id: "h3".into(),
                manifest_hash: manifest_hash(),
                signature: hospital("h3").sign(&signing::consent_message(
                    ConsentAction::Revoke,
                    STUDY,
                    &manifest_hash(),
                )),
            },
            Entry::StudyClosed { study_id: STUDY.into(), state: "completed".into() },
        ],
        true,
    ));
    batches
}

/// Every entry, in log order.
pub fn entries() -> Vec<Entry> {
    batches().into_iter().flat_map(|(entries, _)| entries).collect()
}

/// Writes the fixed ledger into `store` as a coordinator would: one durable batch at a time, a checkpoint signed by
/// the log and co-signed by the witness after each sealed batch, and the log's info in the store's meta.
pub fn write_ledger(store: &mut dyn Store) {
    let info = LogInfo {
        origin: ORIGIN.into(),
        key_name: LOG_KEY.into(),
        public_key: log_identity().public_key(),
        witnesses: vec![(WITNESS_KEY.into(), witness_identity().public_key())],
        quorum: 1,
    };
    store.put_meta(LOG_INFO_KEY, info.to_text().as_bytes()).expect("log info");
    let config = WitnessConfig {
        name: WITNESS_KEY.into(),
        logs: vec![TrustedLog {
            origin: ORIGIN.into(),
            key_name: LOG_KEY.into(),
            public_key: log_identity().public_key(),
        }],
    };
    let mut witness = Witness::new(config, witness_identity(), WitnessState::default());
    let mut tree = MerkleTree::new();
    let mut last: Option<Checkpoint> = None;
    let mut timestamp_ms = FIRST_SEAL_MS;
    for (entries, seal) in batches() {
        let bytes: Vec<Vec<u8>> = entries.iter().map(Entry::encode).collect();
        tree.extend(bytes.iter().map(|b| merkle::leaf_hash(b)));
        store.append(&bytes).expect("append");
        if !seal {
            continue;
        }
        let checkpoint = Checkpoint {
            origin: ORIGIN.into(),
            size: tree.len(),
            root: tree.root(),
            previous: last.as_ref().map_or([0; 32], Checkpoint::note_hash),
            timestamp_ms,
        };
        let mut signed = checkpoint.sign(LOG_KEY, &log_identity()).expect("sign");
        let old_size = last.as_ref().map_or(0, |c| c.size);
        let proof = merkle::consistency_proof_from(&tree, old_size, tree.len()).expect("proof");
        signed.signatures.push(witness.add_checkpoint(&signed.to_note(), old_size, &proof).expect("co-signed"));
        store.put_checkpoint(tree.len(), signed.to_note().as_bytes()).expect("checkpoint");
        last = Some(checkpoint);
        timestamp_ms += 60_000;
    }
}

/// A ledger folder holding the fixed ledger, closed so that the dashboard opens it as a copy.
pub fn ledger_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = RocksDbStore::open(dir.path()).expect("open");
    write_ledger(&mut store);
    dir
}

/// Writes the folder's ledger as an export file next to it and returns the file's path.
pub fn export_file(folder: &Path, out: &Path) -> std::path::PathBuf {
    let store = RocksDbStore::open_for_audit(folder).expect("open for audit");
    let bytes = pdc_ledger::export::write(&store, &keys()).expect("export");
    let path = out.join("ledger.pdcx");
    std::fs::write(&path, bytes).expect("write export");
    path
}

/// A dashboard served on 127.0.0.1:0; it stops when dropped.
pub struct Served {
    pub address: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves `source` under `policy` with the clock fixed at [`NOW_MS`].
pub async fn serve(source: Source, policy: TrustPolicy) -> Served {
    serve_with(source, policy, Arc::new(|| NOW_MS), None).await
}

/// Serves `source` under `policy` with `clock`, re-reading the source every `refresh_seconds`.
pub async fn serve_with(source: Source, policy: TrustPolicy, clock: Clock, refresh_seconds: Option<u64>) -> Served {
    let dashboard = Dashboard::open(source, policy, clock, refresh_seconds).expect("the dashboard opens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        pdc_dashboard::server::serve(listener, Arc::new(dashboard), shutdown).await.expect("serve");
    });
    Served { address, _stop: stop }
}

/// A response: status, headers and body.
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

/// Sends one request over a fresh HTTP/1.1 connection.
pub async fn request(address: SocketAddr, method: &str, path: &str, accept: Option<&str>) -> Reply {
    let stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    let mut builder = hyper::Request::builder().method(method).uri(path).header("host", address.to_string());
    if let Some(accept) = accept {
        builder = builder.header("accept", accept);
    }
    let response = sender.send_request(builder.body(Empty::<Bytes>::new()).expect("request")).await.expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    Reply { status, headers, body: String::from_utf8(body.to_vec()).expect("UTF-8 body") }
}

/// GET `path`.
pub async fn get(address: SocketAddr, path: &str) -> Reply {
    request(address, "GET", path, None).await
}
