//! Issue 20, part 4, as an adversary would try it against the built `pdc`: a forged export with quorum 0, a
//! ledger with no checkpoint, an unsealed tail, a history rewritten after a verified run, a key swapped after
//! trust on first use, and a coordinator configured with a minority witness quorum. Every forged input is made
//! with the ledger crate's own writers and real Ed25519 keys, so the only lie in it is the one under test.

use std::path::{Path, PathBuf};

use pdc_coordinator::ledger::{LOG_INFO_KEY, LedgerSettings, LogInfo};
use pdc_ledger::Identity;
use pdc_ledger::audit::AuditKeys;
use pdc_ledger::checkpoint::Checkpoint;
use pdc_ledger::entry::{Entry, Role};
use pdc_ledger::merkle::{self, MerkleTree};
use pdc_ledger::store::{RocksDbStore, Store};
use pdc_ledger::witness::{TrustedLog, Witness, WitnessConfig, WitnessState};

use crate::ledger::pdc_run;

const WITNESS: &str = "board.test/witness";

/// A log as its operator holds it: the log's key and the key of the one witness the board trusts.
struct Operator {
    log: Identity,
    /// The witness's key seed: each sealing starts a witness afresh from it.
    witness_seed: [u8; 32],
    witness: Identity,
}

impl Operator {
    fn new(seed: u8) -> Self {
        let witness_seed = [seed.wrapping_add(100); 32];
        Operator { log: Identity::from_seed([seed; 32]), witness_seed, witness: Identity::from_seed(witness_seed) }
    }

    /// The keys a ledger of this log names, with the witnesses and quorum it claims.
    fn claimed(&self, witnesses: Vec<(String, pdc_ledger::PublicKey)>, quorum: usize) -> AuditKeys {
        let defaults = LedgerSettings::default();
        AuditKeys {
            origin: defaults.origin,
            log_key_name: defaults.key_name,
            log_key: self.log.public_key(),
            witnesses,
            quorum,
        }
    }

    /// The honest claim: the board's witness, quorum 1.
    fn honest(&self) -> AuditKeys {
        self.claimed(vec![(WITNESS.into(), self.witness.public_key())], 1)
    }

    /// Checkpoints of `entries` at each of `sizes`, chained, signed by the log and, with `witnessed`, co-signed
    /// by a witness with a fresh state (one that never saw another history of this log).
    fn seal(&self, entries: &[Vec<u8>], sizes: &[u64], witnessed: bool) -> Vec<String> {
        let keys = self.honest();
        let config = WitnessConfig {
            name: WITNESS.into(),
            logs: vec![TrustedLog {
                origin: keys.origin.clone(),
                key_name: keys.log_key_name.clone(),
                public_key: self.log.public_key(),
            }],
        };
        let mut witness = Witness::new(config, Identity::from_seed(self.witness_seed), WitnessState::default());
        let tree: MerkleTree = entries.iter().map(|bytes| merkle::leaf_hash(bytes)).collect();
        let mut last: Option<Checkpoint> = None;
        let mut notes = Vec::new();
        for (&size, timestamp_ms) in sizes.iter().zip(1_767_000_000_000u64..) {
            let checkpoint = Checkpoint {
                origin: keys.origin.clone(),
                size,
                root: tree.root_at(size).unwrap(),
                previous: last.as_ref().map_or([0; 32], Checkpoint::note_hash),
                timestamp_ms,
            };
            let mut signed = checkpoint.sign(&keys.log_key_name, &self.log).unwrap();
            if witnessed {
                let old_size = last.as_ref().map_or(0, |c| c.size);
                let proof = merkle::consistency_proof_from(&tree, old_size, size).unwrap();
                signed.signatures.push(witness.add_checkpoint(&signed.to_note(), old_size, &proof).unwrap());
            }
            last = Some(checkpoint);
            notes.push(signed.to_note());
        }
        notes
    }

    /// The board's flags: the pinned log key, the trusted witness, quorum 1, and its state file.
    fn trust(&self, state: &Path) -> Vec<String> {
        vec![
            "--log-key".into(),
            hex::encode(self.log.public_key().to_bytes()),
            "--witness".into(),
            format!("{WITNESS}={}", hex::encode(self.witness.public_key().to_bytes())),
            "--quorum".into(),
            "1".into(),
            "--state".into(),
            state.to_str().unwrap().into(),
        ]
    }
}

/// Made-up but rule-abiding entries: `n` studies created, and a hospital registered with a real key.
fn entries(n: usize, tag: &str) -> Vec<Vec<u8>> {
    let mut entries = vec![Entry::MemberRegistered {
        pdc_id: "ward-a".into(),
        role: Role::Hospital,
        public_key: Identity::generate().public_key().to_bytes(),
    }];
    for i in 1..n {
        let manifest_hash = pdc_ledger::sha3_256(format!("{tag} {i}").as_bytes());
        entries.push(Entry::StudyCreated { study_id: format!("{tag}-{i}"), manifest_hash });
    }
    entries.iter().map(Entry::encode).collect()
}

fn write_export(path: &Path, entries: &[Vec<u8>], notes: &[String], keys: &AuditKeys) -> String {
    std::fs::write(path, pdc_ledger::export::write_parts(entries, notes, keys).unwrap()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `pdc audit verify --file <file>` with `trust`.
fn verify_file(file: &str, trust: &[String]) -> (bool, String, String) {
    let mut args: Vec<&str> = vec!["audit", "verify", "--file", file];
    args.extend(trust.iter().map(String::as_str));
    pdc_run(&args)
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("board").join("audit-state.json")
}

#[test]
fn a_forged_export_with_quorum_zero_fails_even_with_the_right_log_key_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::new(21);
    let state = state_path(dir.path());
    let trust = operator.trust(&state);

    // No checkpoint at all, quorum 0 claimed: nothing vouches for the entries.
    let made_up = entries(4, "forged");
    let file = write_export(&dir.path().join("forged.export"), &made_up, &[], &operator.claimed(Vec::new(), 0));
    let (ok, stdout, stderr) = verify_file(&file, &trust);
    assert!(!ok, "{stdout}{stderr}");
    assert!(stdout.starts_with("NO SEALED CHECKPOINT\n"), "{stdout}");
    assert!(stdout.contains("unsealed: no checkpoint is sealed under the auditor's policy"), "{stdout}");
    assert!(stdout.contains("entries 0..=3 (4 entries)"), "{stdout}");
    assert!(stderr.contains("no checkpoint of the ledger is sealed under the auditor's policy"), "{stderr}");
    assert!(stderr.contains("the ledger claims a quorum of 0 of its witnesses []"), "{stderr}");

    // The operator itself signs a checkpoint with the log key but no witness co-signs: quorum 0 claimed, quorum 1
    // required by the board.
    let notes = operator.seal(&made_up, &[4], false);
    let file = write_export(&dir.path().join("signed.export"), &made_up, &notes, &operator.claimed(Vec::new(), 0));
    let (ok, stdout, stderr) = verify_file(&file, &trust);
    assert!(!ok, "{stdout}{stderr}");
    assert!(stdout.starts_with("FAIL (1 failures)\n"), "{stdout}");
    assert!(
        stdout.contains(
            "  witness_quorum checkpoints 4: checkpoint 4 is co-signed by 0 trusted witnesses, below the auditor's \
             quorum of 1 (of 1 trusted witnesses)"
        ),
        "{stdout}"
    );
    assert!(stderr.contains("the ledger failed 1 checks"), "{stderr}");
    // Nothing was verified, so nothing was remembered.
    assert!(!state.exists());

    // The same file under the policy it claims for itself would pass: only the auditor's policy tells.
    let mut lenient = operator.trust(&state);
    lenient[5] = "0".into();
    let (ok, stdout, stderr) = verify_file(&file, &lenient);
    assert!(ok && stdout.starts_with("PASS\n"), "{stdout}{stderr}");
}

#[test]
fn a_ledger_folder_without_a_checkpoint_is_not_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::new(22);
    let folder = dir.path().join("ledger");
    let made_up = entries(3, "unsealed");
    {
        let mut store = RocksDbStore::open(&folder).unwrap();
        store.append(&made_up).unwrap();
        let claimed = operator.claimed(Vec::new(), 0);
        let info = LogInfo {
            origin: claimed.origin,
            key_name: claimed.log_key_name,
            public_key: claimed.log_key,
            witnesses: Vec::new(),
            quorum: 0,
        };
        store.put_meta(LOG_INFO_KEY, info.to_text().as_bytes()).unwrap();
    }
    let state = state_path(dir.path());
    let mut args = vec!["audit", "verify", "--ledger", folder.to_str().unwrap()];
    let trust = operator.trust(&state);
    args.extend(trust.iter().map(String::as_str));
    let (ok, stdout, stderr) = pdc_run(&args);
    assert!(!ok, "{stdout}{stderr}");
    assert!(stdout.starts_with("NO SEALED CHECKPOINT\nsize: 3 entries"), "{stdout}");
    assert!(stderr.contains("no checkpoint of the ledger is sealed under the auditor's policy"), "{stderr}");
    assert!(!state.exists());
    // The audit read the folder and changed nothing in it.
    let store = RocksDbStore::open(&folder).unwrap();
    assert_eq!(store.size(), 3);
    assert!(store.checkpoints().unwrap().is_empty());
}

#[test]
fn an_unsealed_tail_is_reported_and_is_not_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::new(23);
    let log = entries(5, "tail");
    let notes = operator.seal(&log, &[3], true);
    let file = write_export(&dir.path().join("tail.export"), &log, &notes, &operator.honest());
    let state = state_path(dir.path());
    let (ok, stdout, stderr) = verify_file(&file, &operator.trust(&state));
    assert!(!ok, "{stdout}{stderr}");
    assert!(stdout.starts_with("UNSEALED TAIL (2 entries)\n"), "{stdout}");
    let json_args: Vec<String> = operator.trust(&state).into_iter().chain(["--json".to_owned()]).collect();
    let (ok, json, _) = verify_file(&file, &json_args);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(!ok);
    assert_eq!(
        (&json["verdict"], &json["size"], &json["sealed"]["size"]),
        (&"unsealed_tail".into(), &5.into(), &3.into())
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == "unsealed tail: entries 3..=4 (2 entries) beyond the last sealed checkpoint (size 3)"),
        "{stdout}"
    );
    assert!(stderr.contains("entries 3..=4 (2 entries) are beyond the last sealed checkpoint"), "{stderr}");
    // The sealed part was verified, so it is remembered: size 3.
    let remembered: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(remembered["logs"][0]["checkpoint"]["size"], 3, "{remembered}");
}

#[test]
fn a_history_rewritten_after_a_verified_run_fails_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::new(24);
    let state = state_path(dir.path());
    let trust = operator.trust(&state);

    // The board verifies the honest log and remembers its last checkpoint.
    let honest = entries(6, "honest");
    let notes = operator.seal(&honest, &[2, 6], true);
    let file = write_export(&dir.path().join("honest.export"), &honest, &notes, &operator.honest());
    let (ok, stdout, stderr) = verify_file(&file, &trust);
    assert!(ok && stdout.starts_with("PASS\n"), "{stdout}{stderr}");
    assert!(stderr.contains("note: remembered checkpoint 6"), "{stderr}");
    let remembered = std::fs::read(&state).unwrap();
    let text: serde_json::Value = serde_json::from_slice(&remembered).unwrap();
    assert_eq!(text["logs"][0]["checkpoint"]["size"], 6, "{text}");
    let verified_root = text["logs"][0]["checkpoint"]["root"].as_str().unwrap().to_owned();

    // The operator rewrites the history, longer than before, re-signed by its key and by the witness that lost
    // its state: on its own the forged copy passes every check.
    let mut rewritten = honest[..3].to_vec();
    rewritten.extend(entries(6, "rewritten").into_iter().skip(1));
    let forged_notes = operator.seal(&rewritten, &[2, 8], true);
    let forged = write_export(&dir.path().join("rewritten.export"), &rewritten, &forged_notes, &operator.honest());
    let (ok, stdout, stderr) = verify_file(&forged, &operator.trust(&dir.path().join("fresh-state.json")));
    assert!(ok && stdout.starts_with("PASS\n"), "{stdout}{stderr}");

    // The board's second run, with the state of its first, names the inconsistency.
    let (ok, stdout, stderr) = verify_file(&forged, &trust);
    assert!(!ok, "{stdout}{stderr}");
    assert!(stdout.starts_with("FAIL (1 failures)\n"), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("  remembered_checkpoint checkpoints 6, 8: ")).expect(&stdout);
    assert!(line.contains("history rewritten: the last sealed checkpoint 8 does not extend checkpoint 6"), "{line}");
    assert!(line.contains(&verified_root), "{line}");
    assert!(stderr.contains("note: held to checkpoint 6"), "{stderr}");
    // The state does not move to the forged log.
    assert_eq!(std::fs::read(&state).unwrap(), remembered);

    // An older copy of the honest log (a rollback) is named too, and the honest log still passes.
    let older = write_export(&dir.path().join("older.export"), &honest[..2], &notes[..1], &operator.honest());
    let (ok, stdout, _) = verify_file(&older, &trust);
    assert!(!ok && stdout.contains("rolled back: the last sealed checkpoint is 2, behind checkpoint 6"), "{stdout}");
    let (ok, stdout, stderr) = verify_file(&file, &trust);
    assert!(ok && stdout.starts_with("PASS\n"), "{stdout}{stderr}");
    assert_eq!(std::fs::read(&state).unwrap(), remembered);
}

#[test]
fn trust_on_first_use_is_asked_for_and_then_holds_the_log_to_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::new(25);
    let log = entries(3, "tofu");
    let notes = operator.seal(&log, &[3], false);
    let file = write_export(&dir.path().join("log.export"), &log, &notes, &operator.claimed(Vec::new(), 0));
    let state = state_path(dir.path());
    let state_arg = state.to_str().unwrap();

    // No key and no --tofu: refused before anything is read or remembered.
    let (ok, _, stderr) = pdc_run(&["audit", "verify", "--file", &file, "--state", state_arg]);
    assert!(!ok && stderr.contains("no log key to trust: pass --log-key HEX"), "{stderr}");
    assert!(!state.exists());

    let tofu = ["--tofu", "--quorum", "0", "--state", state_arg];
    let (ok, stdout, stderr) = verify_file(&file, &tofu.map(String::from));
    assert!(ok && stdout.starts_with("PASS\n"), "{stdout}{stderr}");
    assert!(stderr.contains("note: trusting on first use the log key the ledger names"), "{stderr}");

    // The same origin re-signed under another key is refused, naming both keys.
    let impostor = Operator::new(26);
    let notes = impostor.seal(&log, &[3], false);
    let file = write_export(&dir.path().join("other.export"), &log, &notes, &impostor.claimed(Vec::new(), 0));
    let remembered = std::fs::read(&state).unwrap();
    let (ok, _, stderr) = verify_file(&file, &tofu.map(String::from));
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(&format!("the ledger names log key {}", hex::encode(impostor.log.public_key().to_bytes())))
    );
    assert!(
        stderr.contains(&format!(
            "not the key {} trusted on first use",
            hex::encode(operator.log.public_key().to_bytes())
        ))
    );
    assert_eq!(std::fs::read(&state).unwrap(), remembered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_with_a_minority_witness_quorum_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::processes::coordinator_config(dir.path(), "127.0.0.1:0");
    let example = std::fs::read_to_string(&config).unwrap();
    let witnesses: String = ["a", "b"]
        .iter()
        .map(|name| {
            format!(
                "\n[[ledger.witnesses]]\nname = \"witness-{name}\"\nurl = \"http://127.0.0.1:9\"\npublic_key = \"{}\"\n",
                hex::encode(Identity::generate().public_key().to_bytes())
            )
        })
        .collect();
    for (quorum, expected) in [
        (1, "invalid ledger.quorum: quorum 1 is not a majority of the 2 witnesses configured: it must be at least 2"),
        (0, "invalid ledger.quorum: quorum 0 is not a majority of the 2 witnesses configured: it must be at least 2"),
    ] {
        let text = example.replace("quorum = 0\n", &format!("quorum = {quorum}\n")) + &witnesses;
        std::fs::write(&config, text).unwrap();
        let output = crate::processes::pdc().arg("coordinator").arg("--config").arg(&config).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        // Refused before anything was created: no data folder, no ledger, no key.
        assert!(!dir.path().join("coordinator").exists());
        assert!(!dir.path().join("coordinator.key").exists());
    }
    // A majority, and the example's quorum 0 without witnesses, are accepted.
    std::fs::write(&config, example.replace("quorum = 0\n", "quorum = 2\n") + &witnesses).unwrap();
    pdc_coordinator::config::ConfigFile::load(&config).unwrap();
    std::fs::write(&config, &example).unwrap();
    pdc_coordinator::config::ConfigFile::load(&config).unwrap();
}

#[test]
fn a_trust_file_holds_the_policy_and_prove_and_consistency_use_only_sealed_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::new(27);
    let log = entries(6, "trusted");
    let notes = operator.seal(&log, &[2, 6], true);
    let file = write_export(&dir.path().join("log.export"), &log, &notes, &operator.honest());
    let trust_file = dir.path().join("board.toml");
    std::fs::write(
        &trust_file,
        format!(
            "log_key = \"{}\"\norigin = \"{}\"\nquorum = 1\n\n[[witnesses]]\nname = \"{WITNESS}\"\npublic_key = \"{}\"\n",
            hex::encode(operator.log.public_key().to_bytes()),
            LedgerSettings::default().origin,
            hex::encode(operator.witness.public_key().to_bytes())
        ),
    )
    .unwrap();
    let state = state_path(dir.path());
    let trust = ["--trust", trust_file.to_str().unwrap(), "--state", state.to_str().unwrap()].map(String::from);
    let (ok, stdout, stderr) = verify_file(&file, &trust);
    assert!(ok && stdout.starts_with("PASS\n"), "{stdout}{stderr}");
    let run = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(trust.iter().map(String::as_str));
        pdc_run(&args)
    };
    let (ok, stdout, stderr) = run(&["audit", "prove", "--file", &file, "--entry", "4"]);
    assert!(ok && stdout.contains("entry 4 (StudyCreated) is included in the sealed checkpoint of size 6"), "{stderr}");
    let (ok, stdout, stderr) = run(&["audit", "consistency", "--file", &file, "--from", "2", "--to", "6"]);
    assert!(ok && stdout.contains("the checkpoint of size 6 consistently extends the one of size 2"), "{stderr}");

    // The same log with its checkpoints signed by the log alone: nothing to prove against.
    let bare =
        write_export(&dir.path().join("bare.export"), &log, &operator.seal(&log, &[2, 6], false), &operator.honest());
    let (ok, _, stderr) = run(&["audit", "prove", "--file", &bare, "--entry", "4"]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("no checkpoint is sealed under the auditor's policy; the latest: checkpoint 6 is co-signed by 0 trusted witnesses"), "{stderr}");
    let (ok, _, stderr) = run(&["audit", "consistency", "--file", &bare, "--from", "2", "--to", "6"]);
    assert!(
        !ok && stderr.contains("the checkpoint of size 2 is not sealed: checkpoint 2 is co-signed by 0"),
        "{stderr}"
    );

    // A trust file with a setting it does not know is refused, naming the file, and remembers nothing new.
    let remembered = std::fs::read(&state).unwrap();
    std::fs::write(
        &trust_file,
        std::fs::read_to_string(&trust_file).unwrap().replace("quorum = 1", "quorum = 1\nquorom = 0"),
    )
    .unwrap();
    let (ok, _, stderr) = verify_file(&file, &trust);
    assert!(!ok && stderr.contains(&format!("the trust file {} is invalid", trust_file.display())), "{stderr}");
    assert!(stderr.contains("unknown field `quorom`"), "{stderr}");
    assert_eq!(std::fs::read(&state).unwrap(), remembered);
}
