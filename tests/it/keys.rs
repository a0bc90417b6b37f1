//! Key rotation: a PDC replaces its key with both keys' signatures, the ledger records it, the old key stops
//! working at once, bad rotations are refused precisely, and `pdc hospital rotate-key` does it for an operator.

use std::time::Duration;

use pdc_ledger::audit;
use pdc_ledger::entry::Entry;
use pdc_ledger::{Identity, signing};
use pdc_proto::pb;
use tonic::Code;

use crate::ledger::{fetch, pdc_run};
use crate::support::{self, TestPdc, assert_status, log_size, root};

fn rotation(
    pdc_id: &str,
    old: &Identity,
    new: &Identity,
    old_signer: &Identity,
    new_signer: &Identity,
) -> pb::KeyRotation {
    let message = signing::rotate_message(pdc_id, &old.public_key().to_bytes(), &new.public_key().to_bytes());
    pb::KeyRotation {
        pdc_id: pdc_id.to_owned(),
        new_public_key: new.public_key().to_bytes().to_vec(),
        old_key_signature: old_signer.sign(&message).to_vec(),
        new_key_signature: new_signer.sign(&message).to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_replaces_the_old_one_on_the_record_and_bad_rotations_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = pdc_coordinator::CoordinatorConfig::new(dir.path().join("coordinator"));
    config.tick_interval = Duration::from_millis(20);
    let (url, _stop, coordinator) = support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await;
    let register = |identity: &Identity| {
        let public_key = identity.public_key().to_bytes();
        pb::RegisterRequest {
            pdc_id: "ward-a".into(),
            public_key: public_key.to_vec(),
            signature: identity.sign(&signing::register_message("ward-a", &public_key)).to_vec(),
        }
    };
    let mut pdc = TestPdc::connect(&url, "ward-a").await;
    pdc.identity = Identity::from_seed([7; 32]);
    pdc.client.register(register(&pdc.identity)).await.unwrap();
    let old = Identity::from_seed([7; 32]);
    let new = Identity::generate();
    let stranger = Identity::generate();

    let size = log_size(&url).await;
    let bad = [
        (rotation("ward-a", &old, &new, &stranger, &new), Code::Unauthenticated, "current key"),
        (rotation("ward-a", &old, &new, &old, &stranger), Code::Unauthenticated, "new key"),
        (rotation("ward-a", &old, &old, &old, &old), Code::InvalidArgument, "is the current key"),
        (rotation("ward-z", &old, &new, &old, &new), Code::Unauthenticated, "ward-z"),
        (
            pb::KeyRotation { new_public_key: vec![1; 31], ..rotation("ward-a", &old, &new, &old, &new) },
            Code::InvalidArgument,
            "new_public_key",
        ),
    ];
    for (request, code, fragment) in bad {
        assert_status(pdc.client.rotate_key(request).await, code, fragment);
    }
    assert_eq!(log_size(&url).await, size, "refused rotations leave the ledger as it was");

    pdc.client.rotate_key(rotation("ward-a", &old, &new, &old, &new)).await.unwrap();
    // The old key no longer authenticates; the new one does.
    let stale = pdc.signed("ListStudies");
    assert_status(pdc.client.list_studies(stale).await, Code::Unauthenticated, "ward-a");
    pdc.identity = new;
    pdc.client.list_studies(pdc.signed("ListStudies")).await.unwrap();
    // Registering again: the new key is the registered one, the old one is taken for someone else's.
    assert!(!pdc.client.register(register(&pdc.identity)).await.unwrap().into_inner().newly_registered);
    assert_status(pdc.client.register(register(&old)).await, Code::AlreadyExists, "another key");

    coordinator.seal_ledger().await.unwrap();
    let (keys, entries, notes) = fetch(&url).await;
    let rotated: Vec<Entry> = entries
        .iter()
        .map(|bytes| Entry::decode(bytes).unwrap())
        .filter(|entry| matches!(entry, Entry::KeyRotated { .. }))
        .collect();
    assert_eq!(rotated.len(), 1);
    let Entry::KeyRotated { old_key, new_key, .. } = &rotated[0] else { unreachable!() };
    assert_eq!((*old_key, *new_key), (old.public_key().to_bytes(), pdc.identity.public_key().to_bytes()));
    let report = audit::verify_parts(&entries, &notes, &keys);
    assert!(report.passed(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdc_hospital_rotate_key_replaces_the_key_file_and_the_agent_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let data = root().join("data/breast_cancer_wisconsin.csv");
    let config = format!(
        "pdc_id = \"hospital-a\"\ncoordinator = \"{url}\"\nkey_file = \"a.key\"\ndata = {data:?}\n\n\
         [retry]\ninitial_ms = 50\nmax_ms = 200\npoll_ms = 50\n"
    );
    let path = dir.path().join("hospital.toml");
    std::fs::write(&path, config).unwrap();
    let key_file = dir.path().join("a.key");

    // The agent registers its first key.
    let agent = pdc_client::Agent::new(pdc_client::HospitalConfig::load(&path).unwrap()).unwrap();
    let running = tokio::spawn(agent.run());
    let mut registered = false;
    for _ in 0..100 {
        let (_, entries, _) = fetch(&url).await;
        registered =
            entries.iter().any(|bytes| matches!(Entry::decode(bytes).unwrap(), Entry::MemberRegistered { .. }));
        if registered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(registered);
    running.abort();
    let old_secret = std::fs::read_to_string(&key_file).unwrap();

    let (ok, stdout, stderr) = pdc_run(&["hospital", "rotate-key", "--config", path.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    let new_key = stdout.trim().rsplit(' ').next().unwrap().to_owned();
    assert_ne!(std::fs::read_to_string(&key_file).unwrap(), old_secret);
    assert!(!dir.path().join("a.key.new").exists());
    let loaded = Identity::load_or_create(&key_file).unwrap();
    assert_eq!(hex::encode(loaded.public_key().to_bytes()), new_key);

    // Restarted with the new key, the agent is who it was: it joins a study and trains.
    let agent = pdc_client::Agent::new(pdc_client::HospitalConfig::load(&path).unwrap()).unwrap();
    let running = tokio::spawn(agent.run());
    let mut researcher = support::researcher(&url).await;
    let manifest = "name = \"after-rotation\"\nmodel = { kind = \"logistic_regression\" }\n[data]\ntask = \
                    \"binary_classification\"\nlabel = \"malignant\"\n[training]\nrounds = 1\nlocal_epochs = 1\n\
                    batch_size = 16\nlearning_rate = 0.1\n[participants]\nmin = 1\nmax = 1\nround_deadline_secs = 30\n";
    let request = pb::CreateStudyRequest {
        manifest_toml: manifest.to_owned(),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| !s.consented.is_empty()).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    assert_eq!(status.rounds[0].contributors, ["hospital-a"]);
    running.abort();

    // The contribution verifies under the rotated key in an audit of the whole ledger.
    let (keys, entries, notes) = fetch(&url).await;
    let report = audit::verify_parts(&entries, &notes, &keys);
    assert!(report.failures.iter().all(|f| f.rule != audit::Rule::Signature), "{report}");
    assert!(entries.iter().any(|bytes| matches!(Entry::decode(bytes).unwrap(), Entry::KeyRotated { .. })));
}
