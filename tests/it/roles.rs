//! Identities, roles and consent end to end, over mutual TLS with a consortium file: an unknown or non-member
//! certificate is refused; a researcher manages only its own studies and an auditor writes nothing; drafts are
//! hidden from hospitals; a key revoked by reloading the consortium file is refused from the next round; a
//! hospital without a valid consent never receives a task or the model, and revocation and a consent's round
//! limit take it out of the next round; a consent's ε limit refuses the update that would pass it; a hospital's
//! policy consents only to manifests its named researcher signed, with its conditions. Every refusal leaves the
//! ledger as it was.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pdc_coordinator::manifest::{Manifest, csv_header};
use pdc_ledger::audit;
use pdc_ledger::entry::Entry;
use pdc_ledger::signing::{self, ConsentAction, ConsentConditions};
use pdc_proto::pb;
use pdc_proto::pb::audit_service_client::AuditServiceClient;
use pdc_proto::pb::study_service_client::StudyServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{self, TestPdc, assert_status};
use crate::tls::{Party, keygen, register_request, start_tls_coordinator_with, tls_channel, tls_pdc};

const MANIFEST: &str = r#"
name = "NAME"
model = { kind = "logistic_regression" }
[data]
task = "binary_classification"
label = "malignant"
[training]
rounds = ROUNDS
local_epochs = 1
batch_size = 32
learning_rate = 0.1
[participants]
min = 1
max = 4
round_deadline_secs = 2
"#;

fn manifest(name: &str, rounds: u32) -> String {
    MANIFEST.replace("NAME", name).replace("ROUNDS", &rounds.to_string())
}

/// Writes a consortium file listing `members` with their roles and certificates.
fn write_consortium(path: &Path, members: &[(&Party, &str)]) {
    let mut text = String::new();
    for (party, role) in members {
        text.push_str(&format!(
            "[[members]]\nid = \"{}\"\nrole = \"{role}\"\npublic_key = \"{}\"\ncertificate = {:?}\n\n",
            party.name,
            hex::encode(party.identity.public_key().to_bytes()),
            party.cert
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// `researcher`'s signed request to create a study from `manifest_toml` and the bundled table.
fn signed_create(researcher: &Party, signer: &Party, manifest_toml: &str, draft: bool) -> pb::CreateStudyRequest {
    let csv = support::breast_cancer_csv();
    let canonical = Manifest::parse(manifest_toml).unwrap().resolve(&csv_header(&csv)).unwrap().to_canonical_toml();
    let hash = pdc_ledger::sha3_256(canonical.as_bytes());
    let signature = signer.identity.sign(&signing::manifest_message(&researcher.name, &hash)).to_vec();
    pb::CreateStudyRequest {
        manifest_toml: manifest_toml.to_owned(),
        validation_csv: csv.into_bytes(),
        manifest_signature: signature,
        draft,
    }
}

async fn study_client(url: &str, ca: &Path, party: &Party) -> StudyServiceClient<Channel> {
    StudyServiceClient::new(tls_channel(url, ca, Some(party)).await.unwrap()).max_decoding_message_size(8 << 20)
}

fn study(study_id: &str) -> pb::StudyRef {
    pb::StudyRef { study_id: study_id.to_owned() }
}

fn entries(coordinator: &pdc_coordinator::Coordinator) -> Vec<Entry> {
    coordinator.ledger().entries().unwrap().into_iter().map(|(_, entry)| entry).collect()
}

struct Consortium {
    dir: tempfile::TempDir,
    server: Party,
    hospitals: [Party; 2],
    alice: Party,
    bob: Party,
    carol: Party,
    stranger: Party,
    file: PathBuf,
}

/// A coordinator, two hospitals, researchers alice and bob, auditor carol, all in the consortium file; and a
/// stranger whose certificate the TLS layer trusts but the consortium does not list.
fn consortium() -> Consortium {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let server = keygen(path, "coordinator", "coordinator");
    let hospitals = [keygen(path, "hospital-a", "hospital"), keygen(path, "hospital-b", "hospital")];
    let alice = keygen(path, "alice", "researcher");
    let bob = keygen(path, "bob", "researcher");
    let carol = keygen(path, "carol", "auditor");
    let stranger = keygen(path, "stranger", "researcher");
    let file = path.join("consortium.toml");
    write_consortium(
        &file,
        &[
            (&hospitals[0], "hospital"),
            (&hospitals[1], "hospital"),
            (&alice, "researcher"),
            (&bob, "researcher"),
            (&carol, "auditor"),
        ],
    );
    Consortium { dir, server, hospitals, alice, bob, carol, stranger, file }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_act_only_in_their_roles_and_strangers_not_at_all() {
    let c = consortium();
    let (url, _stop, coordinator) =
        start_tls_coordinator_with(c.dir.path(), &c.server, &[&c.stranger], Some(&c.file)).await;
    let ca = c.server.cert.as_path();

    // The file is on the ledger: its hash, then each member.
    let recorded = entries(&coordinator);
    assert!(matches!(recorded[0], Entry::ConsortiumRecorded { members: 5, .. }), "{recorded:?}");
    let registered: Vec<&str> = recorded
        .iter()
        .filter_map(|entry| match entry {
            Entry::MemberRegistered { pdc_id, .. } => Some(pdc_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(registered, ["alice", "bob", "carol", "hospital-a", "hospital-b"]);
    let size = coordinator.ledger().size();

    // A certificate the TLS layer trusts but no member holds: refused on every service, and it cannot register.
    let not_member = "which is no current consortium member's";
    let mut stranger = study_client(&url, ca, &c.stranger).await;
    assert_status(stranger.get_status(study("x")).await, Code::PermissionDenied, not_member);
    let request = signed_create(&c.stranger, &c.stranger, &manifest("s", 1), false);
    assert_status(stranger.create_study(request).await, Code::PermissionDenied, not_member);
    let mut audit = AuditServiceClient::new(tls_channel(&url, ca, Some(&c.stranger)).await.unwrap());
    assert_status(audit.get_log_info(pb::LogInfoRequest {}).await, Code::PermissionDenied, not_member);
    let mut pdc = tls_pdc(&url, ca, &c.stranger, &c.stranger).await;
    assert_status(
        pdc.client.register(register_request(&c.stranger, "stranger")).await,
        Code::PermissionDenied,
        not_member,
    );
    // A member hospital's own key under another id, and the right certificate for an unlisted id.
    let mut a = tls_pdc(&url, ca, &c.hospitals[0], &c.hospitals[0]).await;
    assert_status(
        a.client.register(register_request(&c.hospitals[0], "hospital-z")).await,
        Code::PermissionDenied,
        "hospital-z is not a hospital of the consortium",
    );
    assert!(
        !a.client
            .register(register_request(&c.hospitals[0], "hospital-a"))
            .await
            .unwrap()
            .into_inner()
            .newly_registered
    );
    assert_eq!(coordinator.ledger().size(), size, "refusals leave the ledger as it was");

    // alice creates a study: her manifest signature is required, and must be hers.
    let mut alice = study_client(&url, ca, &c.alice).await;
    let unsigned = pb::CreateStudyRequest {
        manifest_signature: Vec::new(),
        ..signed_create(&c.alice, &c.alice, &manifest("s", 1), false)
    };
    assert_status(alice.create_study(unsigned).await, Code::Unauthenticated, "researcher alice must sign the manifest");
    let forged = signed_create(&c.alice, &c.bob, &manifest("s", 1), false);
    assert_status(alice.create_study(forged).await, Code::Unauthenticated, "manifest signature of alice");
    let mut hospital_study = study_client(&url, ca, &c.hospitals[0]).await;
    let request = signed_create(&c.hospitals[0], &c.hospitals[0], &manifest("s", 1), false);
    assert_status(
        hospital_study.create_study(request).await,
        Code::PermissionDenied,
        "the StudyService is for researchers and auditors",
    );
    assert_eq!(coordinator.ledger().size(), size);
    let study_id = alice
        .create_study(signed_create(&c.alice, &c.alice, &manifest("s", 1), true))
        .await
        .unwrap()
        .into_inner()
        .study_id;
    assert!(
        entries(&coordinator)
            .iter()
            .any(|e| matches!(e, Entry::ManifestSigned { researcher_id, .. } if researcher_id == "alice"))
    );
    let size = coordinator.ledger().size();

    // bob manages only his own studies: alice's is refused to him whatever he does.
    let mut bob = study_client(&url, ca, &c.bob).await;
    let others = "manages only its own studies, and this one is alice's";
    assert_status(bob.open_recruiting(study(&study_id)).await, Code::PermissionDenied, others);
    assert_status(bob.start_study(study(&study_id)).await, Code::PermissionDenied, others);
    assert_status(bob.stop_study(study(&study_id)).await, Code::PermissionDenied, others);
    assert_status(bob.get_status(study(&study_id)).await, Code::PermissionDenied, others);
    assert_status(bob.download_model(study(&study_id)).await.map(|_| ()), Code::PermissionDenied, others);
    // carol reads, and writes nothing.
    let mut carol = study_client(&url, ca, &c.carol).await;
    let status = carol.get_status(study(&study_id)).await.unwrap().into_inner();
    assert_eq!(status.state, pb::StudyState::Created as i32, "a draft");
    for refused in [
        carol.start_study(study(&study_id)).await,
        carol.stop_study(study(&study_id)).await,
        carol.open_recruiting(study(&study_id)).await,
    ] {
        assert_status(refused, Code::PermissionDenied, "auditor carol reads only");
    }
    let request = signed_create(&c.carol, &c.carol, &manifest("t", 1), false);
    assert_status(carol.create_study(request).await, Code::PermissionDenied, "auditor carol reads only");
    let mut carol_audit = AuditServiceClient::new(tls_channel(&url, ca, Some(&c.carol)).await.unwrap());
    assert_eq!(carol_audit.get_log_info(pb::LogInfoRequest {}).await.unwrap().into_inner().size, size);
    assert_eq!(coordinator.ledger().size(), size, "refused writes leave the ledger as it was");

    // A draft is hidden from hospitals, cannot be consented to or started; once recruiting, it is listed.
    let listed = |pdc: &mut TestPdc| {
        let request = pdc.signed("ListStudies");
        let mut client = pdc.client.clone();
        async move { client.list_studies(request).await.unwrap().into_inner().studies }
    };
    assert!(listed(&mut a).await.is_empty());
    // The draft is refused before any signature is looked at.
    let hash = [0; 32];
    let consent = pb::ConsentRequest {
        pdc_id: "hospital-a".into(),
        study_id: study_id.clone(),
        signature: c.hospitals[0]
            .identity
            .sign(&signing::consent_message(ConsentAction::Grant, &study_id, &hash))
            .to_vec(),
        conditions: None,
    };
    assert_status(
        a.client.consent(consent).await,
        Code::FailedPrecondition,
        "consent only to recruiting or running studies",
    );
    assert_status(
        alice.start_study(study(&study_id)).await,
        Code::FailedPrecondition,
        "is a draft: open recruiting first",
    );
    let status = alice.open_recruiting(study(&study_id)).await.unwrap().into_inner();
    assert_eq!(status.state, pb::StudyState::Recruiting as i32);
    assert_status(alice.open_recruiting(study(&study_id)).await, Code::FailedPrecondition, "not a draft");
    let listing = listed(&mut a).await;
    assert_eq!(listing.len(), 1);
    assert_eq!(listing[0].researcher_id, "alice");
    let manifest_hash = pdc_ledger::sha3_256(listing[0].manifest_toml.as_bytes());
    c.alice
        .identity
        .public_key()
        .verify(&signing::manifest_message("alice", &manifest_hash), &listing[0].manifest_signature, "alice")
        .unwrap();
    assert_eq!(coordinator.ledger().size(), size);

    // The owner stops her own study.
    let status = alice.stop_study(study(&study_id)).await.unwrap().into_inner();
    assert_eq!(status.state, pb::StudyState::Stopped as i32);

    // The researcher's CLI signs the manifest itself (the canonical hash it computes is the coordinator's), keeps
    // a draft, and opens it; bob's key is refused for alice's name.
    let manifest_path = c.dir.path().join("cli.toml");
    std::fs::write(&manifest_path, manifest("cli", 1)).unwrap();
    let validation = support::root().join("data/breast_cancer_wisconsin.csv");
    let pdc = |party: &Party, args: &[&str]| {
        let tls = ["--coordinator", &url, "--ca", ca.to_str().unwrap(), "--cert", party.cert.to_str().unwrap()];
        let key = ["--key", party.key.to_str().unwrap()];
        std::process::Command::new(env!("CARGO_BIN_EXE_pdc"))
            .arg("study")
            .args(args)
            .args(tls)
            .args(key)
            .output()
            .unwrap()
    };
    let create =
        ["create", "--manifest", manifest_path.to_str().unwrap(), "--validation", validation.to_str().unwrap()];
    let forged = pdc(&c.bob, &[&create[..], &["--researcher", "alice"]].concat());
    assert!(!forged.status.success());
    let stderr = String::from_utf8_lossy(&forged.stderr);
    assert!(stderr.contains("PermissionDenied") || stderr.contains("Unauthenticated"), "{stderr}");
    let output = pdc(&c.alice, &[&create[..], &["--researcher", "alice", "--draft"]].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let cli_study = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let output = pdc(&c.alice, &["recruit", &cli_study]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains(": recruiting, round 0/1"), "{output:?}");
    let output = pdc(&c.bob, &["stop", &cli_study]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("manages only its own studies"), "{output:?}");
    let report =
        coordinator.ledger().with_store(|store| audit::verify_store(store, &coordinator.ledger().audit_keys()));
    assert!(report.passed(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_in_the_consortium_file_is_refused_from_the_next_round() {
    let c = consortium();
    let (url, _stop, coordinator) = start_tls_coordinator_with(c.dir.path(), &c.server, &[], Some(&c.file)).await;
    let ca = c.server.cert.as_path();
    let mut alice = study_client(&url, ca, &c.alice).await;
    let study_id = alice
        .create_study(signed_create(&c.alice, &c.alice, &manifest("revocation", 2), false))
        .await
        .unwrap()
        .into_inner()
        .study_id;
    let mut a = tls_pdc(&url, ca, &c.hospitals[0], &c.hospitals[0]).await;
    let mut b = tls_pdc(&url, ca, &c.hospitals[1], &c.hospitals[1]).await;
    a.consent_all().await;
    b.consent_all().await;
    let (mut a_tasks, mut b_tasks) = (a.tasks().await, b.tasks().await);
    alice.start_study(study(&study_id)).await.unwrap();
    let task = support::next_task(&mut a_tasks).await;
    support::next_task(&mut b_tasks).await;
    let model = a.download(&task).await;
    let delta = vec![0.01; model.len()];
    a.submit(&study_id, 1, &delta).await.unwrap();

    // A malformed file, or one that brings a revoked key back later, is refused and changes nothing.
    let size = coordinator.ledger().size();
    std::fs::write(&c.file, "[[members]]\nid = \"x\"\n").unwrap();
    let error = coordinator.reload_consortium().unwrap_err().to_string();
    assert!(error.starts_with("invalid consortium file") && error.contains("missing field"), "{error}");
    assert_eq!(coordinator.ledger().size(), size);

    // hospital-b leaves the consortium mid-round: its key is revoked on the ledger.
    write_consortium(&c.file, &[(&c.hospitals[0], "hospital"), (&c.alice, "researcher"), (&c.carol, "auditor")]);
    assert_eq!(coordinator.reload_consortium().unwrap(), 3, "the file, bob's revocation and b's");
    let revoked: Vec<String> = entries(&coordinator)
        .iter()
        .filter_map(|e| match e {
            Entry::KeyRevoked { pdc_id, .. } => Some(pdc_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(revoked, ["bob", "hospital-b"]);
    // Its task stream ends, and whatever it signs with the revoked key is refused.
    let ended = tokio::time::timeout(Duration::from_secs(10), b_tasks.message()).await.expect("the stream ends");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    let size = coordinator.ledger().size();
    let refused = "which is no current consortium member's";
    assert_status(b.submit(&study_id, 1, &delta).await, Code::PermissionDenied, refused);
    assert_status(b.client.list_studies(b.signed("ListStudies")).await, Code::PermissionDenied, refused);
    assert_eq!(coordinator.ledger().size(), size, "the revoked key's calls leave the ledger as it was");
    let mut bob = study_client(&url, ca, &c.bob).await;
    assert_status(bob.get_status(study(&study_id)).await, Code::PermissionDenied, refused);

    // Round 1 closes at its deadline with a alone, and round 2 is a's only.
    let task = support::next_task(&mut a_tasks).await;
    assert_eq!(task.round, 2);
    let model = a.download(&task).await;
    a.submit(&study_id, 2, &vec![0.01; model.len()]).await.unwrap();
    let status = support::wait_for_status(&mut alice, &study_id, Duration::from_secs(30), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    assert_eq!(status.rounds[0].participants, ["hospital-a", "hospital-b"]);
    assert_eq!(status.rounds[0].contributors, ["hospital-a"]);
    assert_eq!(status.rounds[1].participants, ["hospital-a"]);

    // The revoked key can never come back.
    write_consortium(
        &c.file,
        &[(&c.hospitals[0], "hospital"), (&c.hospitals[1], "hospital"), (&c.alice, "researcher")],
    );
    let size = coordinator.ledger().size();
    let error = coordinator.reload_consortium().unwrap_err().to_string();
    assert!(error.contains("member hospital-b: its key") && error.contains("was revoked on the ledger"), "{error}");
    assert_eq!(coordinator.ledger().size(), size);
    let report =
        coordinator.ledger().with_store(|store| audit::verify_store(store, &coordinator.ledger().audit_keys()));
    assert!(report.passed(), "{report}");

    // A coordinator refuses to start on a malformed consortium file.
    let bad = c.dir.path().join("bad.toml");
    std::fs::write(&bad, "[[members]]\nid = \"a\"\nrole = \"nurse\"\npublic_key = \"00\"\n").unwrap();
    let mut config = pdc_coordinator::CoordinatorConfig::new(c.dir.path().join("other"));
    config.consortium = Some(bad);
    let error = pdc_coordinator::Coordinator::new(config).err().expect("refused").to_string();
    assert!(error.contains("member a: unknown role `nurse`"), "{error}");
}

/// Consents `pdc` to `study_id` with `conditions`.
pub(crate) async fn consent_with(
    pdc: &mut TestPdc,
    study_id: &str,
    conditions: ConsentConditions,
) -> Result<(), tonic::Status> {
    let studies = pdc.client.list_studies(pdc.signed("ListStudies")).await.unwrap().into_inner().studies;
    let listing = studies.iter().find(|s| s.study_id == study_id).expect("listed");
    let hash = pdc_ledger::sha3_256(listing.manifest_toml.as_bytes());
    let signature = pdc.identity.sign(&signing::conditional_consent_message(study_id, &hash, &conditions)).to_vec();
    let conditions = Some(pb::ConsentConditions {
        max_rounds: conditions.max_rounds,
        max_epsilon: conditions.max_epsilon,
        expires_at_ms: conditions.expires_at_ms,
    });
    let request = pb::ConsentRequest { pdc_id: pdc.id.clone(), study_id: study_id.to_owned(), signature, conditions };
    pdc.client.consent(request).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_valid_consent_brings_tasks_and_revocation_or_its_round_limit_ends_it_at_the_next_round() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let mut researcher = support::researcher(&url).await;
    let request = pb::CreateStudyRequest {
        manifest_toml: manifest("consent", 2),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    let mut a = TestPdc::register(&url, "a").await;
    let mut b = TestPdc::register(&url, "b").await;
    let mut c = TestPdc::register(&url, "c").await;
    let mut d = TestPdc::register(&url, "d").await;
    a.consent_all().await;
    b.consent_all().await;

    // Conditions that cannot hold are refused, and change nothing.
    let size = support::log_size(&url).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let past = ConsentConditions { expires_at_ms: Some(now - 1_000), ..Default::default() };
    assert_status(
        consent_with(&mut d, &study_id, past).await,
        Code::InvalidArgument,
        "is not after the coordinator's clock",
    );
    let zero = ConsentConditions { max_rounds: Some(0), ..Default::default() };
    assert_status(consent_with(&mut d, &study_id, zero).await, Code::InvalidArgument, "max_rounds must be at least 1");
    let epsilon = ConsentConditions { max_epsilon: Some(1.0), ..Default::default() };
    assert_status(
        consent_with(&mut d, &study_id, epsilon).await,
        Code::InvalidArgument,
        "needs a study that trains with local DP",
    );
    // Conditions the signature does not cover.
    let one_round =
        ConsentConditions { max_rounds: Some(1), expires_at_ms: Some(now + 3_600_000), ..Default::default() };
    let studies = d.client.list_studies(d.signed("ListStudies")).await.unwrap().into_inner().studies;
    let hash = pdc_ledger::sha3_256(studies[0].manifest_toml.as_bytes());
    let loose = ConsentConditions { max_rounds: Some(9), ..one_round };
    let request = pb::ConsentRequest {
        pdc_id: "d".into(),
        study_id: study_id.clone(),
        signature: d.identity.sign(&signing::conditional_consent_message(&study_id, &hash, &one_round)).to_vec(),
        conditions: Some(pb::ConsentConditions {
            max_rounds: loose.max_rounds,
            max_epsilon: None,
            expires_at_ms: loose.expires_at_ms,
        }),
    };
    assert_status(d.client.consent(request).await, Code::Unauthenticated, "signature");
    assert_eq!(support::log_size(&url).await, size, "refused consents leave the ledger as it was");
    // d consents to round 1 only.
    consent_with(&mut d, &study_id, one_round).await.unwrap();
    let recorded = support::log_size(&url).await;
    assert_eq!(recorded, size + 1);

    let mut streams = Vec::new();
    for pdc in [&mut a, &mut b, &mut c, &mut d] {
        streams.push(pdc.tasks().await);
    }
    researcher.start_study(study(&study_id)).await.unwrap();
    let task = support::next_task(&mut streams[0]).await;
    support::next_task(&mut streams[1]).await;
    support::next_task(&mut streams[3]).await;
    let model = a.download(&task).await;
    let delta = vec![0.01; model.len()];

    // c never consented: no model, no update.
    let request = pb::ModelRequest {
        study_id: study_id.clone(),
        round: 1,
        auth: Some(c.signed("DownloadGlobalModel")),
        ..Default::default()
    };
    assert_status(
        c.client.download_global_model(request).await.map(|_| ()),
        Code::PermissionDenied,
        "c is not a participant",
    );
    assert_status(c.submit(&study_id, 1, &delta).await, Code::PermissionDenied, "c has not consented to study");
    // b withdraws mid-round: its update is refused at once, and the round closes at its deadline without it.
    let revoke = pb::ConsentRequest {
        pdc_id: "b".into(),
        study_id: study_id.clone(),
        signature: b
            .identity
            .sign(&signing::consent_message(
                ConsentAction::Revoke,
                &study_id,
                &pdc_ledger::sha3_256(studies[0].manifest_toml.as_bytes()),
            ))
            .to_vec(),
        conditions: None,
    };
    b.client.revoke_consent(revoke).await.unwrap();
    assert_status(b.submit(&study_id, 1, &delta).await, Code::PermissionDenied, "b has not consented to study");
    a.submit(&study_id, 1, &delta).await.unwrap();
    d.submit(&study_id, 1, &delta).await.unwrap();

    // Round 2 is a's alone: b revoked, d's consent covered round 1, c never consented.
    let task = support::next_task(&mut streams[0]).await;
    assert_eq!(task.round, 2);
    assert_status(d.submit(&study_id, 2, &delta).await, Code::PermissionDenied, "covers rounds 1 to 1, not 2");
    a.submit(&study_id, 2, &delta).await.unwrap();
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    assert_eq!(status.rounds[0].participants, ["a", "b", "d"]);
    assert_eq!(status.rounds[0].contributors, ["a", "d"]);
    assert_eq!(status.rounds[1].participants, ["a"]);
    for (name, stream) in ["a", "b", "c", "d"].into_iter().zip(&mut streams).skip(1) {
        let next = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
        assert!(next.is_err(), "{name} was sent a task it has no consent for: {next:?}");
    }
    let mut audit = AuditServiceClient::connect(url.clone()).await.unwrap();
    let request = pb::EntriesRequest { start: recorded - 1, end: recorded };
    let consent = audit.get_entries(request).await.unwrap().into_inner().message().await.unwrap().expect("an entry");
    let Entry::ConsentGranted { conditions, .. } = Entry::decode(&consent.data).unwrap() else {
        panic!("not a consent")
    };
    assert_eq!(conditions, Some(one_round), "the conditions are on the ledger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_epsilon_limit_refuses_the_update_that_would_pass_it_and_then_the_next_round() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let mut researcher = support::researcher(&url).await;
    let private =
        format!("{}[privacy]\nclip_norm = 1.0\nnoise_multiplier = 1.0\ndelta = 1e-5\n", manifest("capped", 3))
            .replace("max = 4", "max = 1")
            .replace("round_deadline_secs = 2", "round_deadline_secs = 60");
    let request = pb::CreateStudyRequest {
        manifest_toml: private,
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    let mut pdc = TestPdc::register(&url, "ward-a").await;
    let signature = pdc.identity.sign(&signing::budget_message("ward-a", "icu", 5.0, 1e-5)).to_vec();
    let declaration =
        pb::BudgetDeclaration { pdc_id: "ward-a".into(), dataset: "icu".into(), epsilon: 5.0, delta: 1e-5, signature };
    pdc.client.declare_budget(declaration).await.unwrap();
    consent_with(&mut pdc, &study_id, ConsentConditions { max_epsilon: Some(1.0), ..Default::default() })
        .await
        .unwrap();
    let mut tasks = pdc.tasks().await;
    researcher.start_study(study(&study_id)).await.unwrap();

    let claim = |epsilon| signing::PrivacyClaim {
        dataset: "icu".into(),
        noise_multiplier: 1.0,
        sampling_rate: 0.05,
        steps: 20,
        clip_norm: 1.0,
        epsilon,
        delta: 1e-5,
    };
    let task = support::next_task(&mut tasks).await;
    let update = vec![0.01f32; pdc.download(&task).await.len()];
    let submit = |round, epsilon| {
        let upload = support::Upload {
            study_id: &study_id,
            round,
            values: &update,
            chunk_bytes: 1 << 20,
            train_loss: 0.0,
            privacy: Some(claim(epsilon)),
        };
        let mut client = pdc.client.clone();
        let identity = &pdc.identity;
        async move { support::upload_with(&mut client, "ward-a", identity, upload).await }
    };
    submit(1, 0.6).await.unwrap();
    let task = support::next_task(&mut tasks).await;
    assert_eq!(task.round, 2);
    // 0.6 more would make 1.2 on this study, above the consent's 1.0: refused, and nothing recorded.
    let size = support::log_size(&url).await;
    assert_status(submit(2, 1.2).await, Code::PermissionDenied, "to 1.2, above the ε = 1 its consent allows");
    assert_eq!(support::log_size(&url).await, size);
    submit(2, 1.0).await.unwrap();
    // All of the consent's ε is spent: round 3 does not open for ward-a.
    let next = tokio::time::timeout(Duration::from_millis(800), tasks.message()).await;
    assert!(next.is_err(), "a task beyond the consent's ε: {next:?}");
    let status = researcher.get_status(study(&study_id)).await.unwrap().into_inner();
    assert_eq!((status.current_round, status.rounds.len()), (2, 2), "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hospital_policy_consents_only_to_studies_its_named_researcher_signed_with_its_conditions() {
    let c = consortium();
    let (url, _stop, coordinator) = start_tls_coordinator_with(c.dir.path(), &c.server, &[], Some(&c.file)).await;
    let ca = c.server.cert.as_path();
    let mut alice = study_client(&url, ca, &c.alice).await;
    let mut bob = study_client(&url, ca, &c.bob).await;
    let by_alice = alice.create_study(signed_create(&c.alice, &c.alice, &manifest("by-alice", 1), false)).await;
    let by_alice = by_alice.unwrap().into_inner().study_id;
    let by_bob = bob.create_study(signed_create(&c.bob, &c.bob, &manifest("by-bob", 1), false)).await;
    let by_bob = by_bob.unwrap().into_inner().study_id;

    let hospital = &c.hospitals[0];
    let data = support::root().join("data/breast_cancer_wisconsin.csv");
    let config = format!(
        "pdc_id = \"{}\"\ncoordinator = \"{url}\"\nkey_file = {:?}\ndata = {data:?}\n\n\
         [consent]\nmodel_kinds = [\"logistic_regression\"]\nmax_rounds = 1\n\
         [consent.researchers]\nalice = \"{}\"\n\n\
         [retry]\ninitial_ms = 50\nmax_ms = 200\npoll_ms = 50\n\n[tls]\nca = {:?}\ncert = {:?}\n",
        hospital.name,
        hospital.key,
        hex::encode(c.alice.identity.public_key().to_bytes()),
        c.server.cert,
        hospital.cert
    );
    let path = c.dir.path().join("hospital-a.toml");
    std::fs::write(&path, config).unwrap();
    let agent = pdc_client::Agent::new(pdc_client::HospitalConfig::load(&path).unwrap()).unwrap();
    let agent = tokio::spawn(agent.run());

    let status =
        support::wait_for_status(&mut alice, &by_alice, Duration::from_secs(30), |s| !s.consented.is_empty()).await;
    assert_eq!(status.consented, ["hospital-a"]);
    // Several polls later, bob's study is still declined.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(bob.get_status(study(&by_bob)).await.unwrap().into_inner().consented.is_empty());
    assert!(!agent.is_finished(), "the agent was refused");
    let consents: Vec<(String, Option<ConsentConditions>)> = entries(&coordinator)
        .into_iter()
        .filter_map(|entry| match entry {
            Entry::ConsentGranted { study_id, conditions, .. } => Some((study_id, conditions)),
            _ => None,
        })
        .collect();
    assert_eq!(consents, [(by_alice, Some(ConsentConditions { max_rounds: Some(1), ..Default::default() }))]);
    agent.abort();
}
