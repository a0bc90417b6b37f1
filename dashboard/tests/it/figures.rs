//! The JSON twins against the ledger's own figures: what the store, the ledger crate's audit and the entries
//! themselves say, computed here without the dashboard.

use std::collections::BTreeMap;

use pdc_dashboard::source::{Source, TrustPolicy};
use pdc_ledger::entry::Entry;
use pdc_ledger::store::{RocksDbStore, Store};
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn the_head_twin_states_the_stores_size_root_and_checkpoint() {
    let folder = ledger_folder();
    let (size, root, latest) = {
        let store = RocksDbStore::open_for_audit(folder.path()).expect("open");
        let (latest, _) = store.latest_checkpoint().expect("read").expect("a checkpoint");
        (store.size(), hex::encode(store.root().expect("root")), latest)
    };
    let served = serve(Source::Folder(folder.path().into()), pinned_policy()).await;
    let head = get(served.address, "/?format=json").await.json();
    assert_eq!(head["size"], json!(size));
    assert_eq!(head["root"], json!(root));
    assert_eq!(head["checkpoint"]["size"], json!(latest));
    assert_eq!(head["checkpoint"]["unsealed_entries"], json!(0));
    assert_eq!(head["checkpoint"]["log_signature"]["valid"], json!(true));
    assert_eq!(head["verdict"]["status"], json!("PASS"), "{head}");
    assert_eq!(head["verdict"]["checkpoints_checked"], json!(5));
    assert_eq!(head["quorum"], json!({ "required": 1, "cosigned": 1, "met": true }));
    let witness = &head["witnesses"][0];
    assert_eq!(witness["name"], json!(WITNESS_KEY));
    assert_eq!(witness["pinned"], json!(true));
    assert_eq!(witness["last_cosigned_size"], json!(latest));
    let store = RocksDbStore::open_for_audit(folder.path()).expect("open");
    let note = String::from_utf8(store.checkpoint(latest).expect("read").expect("the latest note")).expect("UTF-8");
    let signed = pdc_ledger::checkpoint::SignedCheckpoint::parse(&note).expect("parses");
    let cosignature = signed.signatures.iter().find(|s| s.name == WITNESS_KEY).expect("co-signed");
    assert_eq!(witness["signature"], json!(hex::encode(cosignature.signature)));
    // The last of five checkpoints, a minute apart, was made 56 minutes before the fixed clock.
    assert_eq!(witness["age"], json!("56 min"));
    assert_eq!(head["log_key_pinned"], head["log_key_named"]);
}

#[tokio::test]
async fn an_export_file_shows_what_its_folder_shows() {
    let folder = ledger_folder();
    let out = tempfile::tempdir().expect("temp dir");
    let file = export_file(folder.path(), out.path());
    let from_folder = serve(Source::Folder(folder.path().into()), pinned_policy()).await;
    let from_file = serve(Source::File(file), pinned_policy()).await;
    for path in ["/", "/studies/sepsis-2026", "/privacy", "/consents", "/rewards", "/hospitals", "/entries/12"] {
        let mut a = get(from_folder.address, &format!("{path}?format=json")).await.json();
        let mut b = get(from_file.address, &format!("{path}?format=json")).await.json();
        for value in [&mut a, &mut b] {
            if let Some(object) = value.as_object_mut() {
                object.remove("source");
                object.remove("command");
            }
        }
        assert_eq!(a, b, "{path}");
    }
}

#[tokio::test]
async fn the_study_twin_counts_the_ledgers_rounds_and_metrics() {
    let folder = ledger_folder();
    let served = serve(Source::Folder(folder.path().into()), pinned_policy()).await;
    let page = get(served.address, "/studies/sepsis-2026?format=json").await.json();
    let entries = entries();
    let aggregated: Vec<(u32, Vec<(String, f64)>)> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::RoundAggregated { round, metrics, .. } => Some((*round, metrics.clone())),
            _ => None,
        })
        .collect();
    let study = &page["study"];
    assert_eq!(study["summary"]["rounds_aggregated"], json!(aggregated.len()));
    assert_eq!(study["summary"]["state"], json!("completed"));
    assert_eq!(study["summary"]["researcher"], json!(RESEARCHER));
    assert_eq!(study["summary"]["manifest_hash"], json!(hex::encode(manifest_hash())));
    // h3 revoked at the end: two consents stand.
    assert_eq!(study["summary"]["consenting"], json!(2));
    let rounds = study["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), aggregated.len());
    for ((round, metrics), shown) in aggregated.iter().zip(rounds) {
        assert_eq!(shown["round"], json!(round));
        let shown: Vec<(String, f64)> = serde_json::from_value(shown["metrics"].clone()).expect("metrics");
        assert_eq!(shown.len(), metrics.len());
        for ((name, value), (shown_name, shown_value)) in metrics.iter().zip(&shown) {
            assert_eq!(name, shown_name);
            assert_same(*value, *shown_value);
        }
    }
    assert_eq!(rounds[1]["headline"], json!("round 2 aggregated · 2 of 3 hospitals returned · 1 rejected"));
    assert_eq!(rounds[1]["rejections"][0]["pdc"], json!("h3"));
    assert_eq!(rounds[2]["left_out"], json!(["h3"]));
    let auroc: Vec<(u32, f64)> = serde_json::from_value(study["metrics"]["auroc"].clone()).expect("auroc");
    assert_eq!(auroc.len(), aggregated.len());
    for ((round, metrics), (shown_round, shown)) in aggregated.iter().zip(auroc) {
        assert_eq!(*round, shown_round);
        assert_same(metrics[0].1, shown);
    }
}

/// The same `f64`, allowing for serde_json's parser, which without its `float_roundtrip` feature may read the
/// shortest decimal the server wrote one unit in the last place off.
fn assert_same(expected: f64, shown: f64) {
    assert!((expected - shown).abs() <= 2.0 * f64::EPSILON * expected.abs(), "{expected} != {shown}");
}

#[tokio::test]
async fn the_privacy_twin_states_every_spend_of_the_ledger() {
    let folder = ledger_folder();
    let served = serve(Source::Folder(folder.path().into()), pinned_policy()).await;
    let page = get(served.address, "/privacy?format=json").await.json();
    let mut spends: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for entry in entries() {
        if let Entry::PrivacySpent { pdc_id, epsilon, .. } = entry {
            spends.entry(pdc_id).or_default().push(epsilon);
        }
    }
    let shown: BTreeMap<String, Vec<f64>> = page["hospitals"]
        .as_array()
        .expect("hospitals")
        .iter()
        .map(|h| {
            let epsilons = h["spends"].as_array().expect("spends").iter().map(|s| s["epsilon"].as_f64().expect("ε"));
            (h["pdc"].as_str().expect("pdc").to_owned(), epsilons.collect())
        })
        .collect();
    assert_eq!(shown.keys().collect::<Vec<_>>(), spends.keys().collect::<Vec<_>>());
    for (pdc, epsilons) in &spends {
        assert_eq!(shown[pdc].len(), epsilons.len(), "{pdc}");
        for (expected, shown) in epsilons.iter().zip(&shown[pdc]) {
            assert_same(*expected, *shown);
        }
    }
    for hospital in page["hospitals"].as_array().expect("hospitals") {
        assert_eq!(hospital["budget"]["epsilon"], json!(EPSILON_BUDGET));
        assert!(hospital["spends"].as_array().expect("spends").iter().all(|s| s["outside_budget"] == json!(false)));
    }
    // Round 3 was trained without DP, and nothing else was.
    assert_eq!(page["rounds_without_dp"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["rounds_without_dp"][0]["round"], json!(3));
    assert_eq!(page["mechanisms"].as_array().map(Vec::len), Some(5));
}

#[tokio::test]
async fn the_rewards_and_consent_twins_reconcile_with_the_ledger() {
    let folder = ledger_folder();
    let served = serve(Source::Folder(folder.path().into()), pinned_policy()).await;
    let rewards = get(served.address, "/rewards?format=json").await.json();
    let mut paid: BTreeMap<String, f64> = BTreeMap::new();
    for entry in entries() {
        if let Entry::RewardPaid { pdc_id, amount, .. } = entry {
            *paid.entry(pdc_id).or_default() += amount;
        }
    }
    let study = &rewards["studies"][0];
    let hospitals: Vec<String> = serde_json::from_value(study["hospitals"].clone()).expect("hospitals");
    let totals: Vec<f64> = serde_json::from_value(study["totals"].clone()).expect("totals");
    assert_eq!(hospitals, paid.keys().cloned().collect::<Vec<_>>());
    for (total, expected) in totals.iter().zip(paid.values()) {
        assert_same(*expected, *total);
    }
    assert!(study["rounds"].as_array().expect("rounds").iter().all(|r| r["reconciles"] == json!(true)));

    let consents = get(served.address, "/consents?format=json").await.json();
    let rows = consents["consents"].as_array().expect("consents");
    let actions: Vec<(&str, &str)> =
        rows.iter().map(|r| (r["pdc"].as_str().unwrap_or(""), r["action"].as_str().unwrap_or(""))).collect();
    assert_eq!(actions, [("h1", "grant"), ("h2", "grant"), ("h3", "grant"), ("h3", "revoke")]);
    // h1 consented with the key it rotated to, and every signature verifies under the key registered then.
    assert_eq!(rows[0]["signed_by_key"], json!(hex::encode(rotated_h1().public_key().to_bytes())));
    assert!(rows.iter().all(|r| r["signature_valid"] == json!(true)));
    assert_eq!(rows[1]["conditions"], json!(["up to round 5", "at most ε 3"]));
}

#[tokio::test]
async fn the_entry_twin_carries_a_verified_proof_and_search_finds_entries() {
    let folder = ledger_folder();
    let served = serve(Source::Folder(folder.path().into()), pinned_policy()).await;
    let entry = get(served.address, "/entries/12").await;
    assert!(entry.body.contains("pdc audit prove --entry 12 --ledger"), "{}", entry.body);
    let entry = request(served.address, "GET", "/entries/12", Some("application/json")).await.json();
    assert_eq!(entry["kind"], json!("ConsentGranted"));
    assert_eq!(entry["proof"]["status"], json!("verified"), "{entry}");
    assert_eq!(entry["raw"], json!(hex::encode(entries()[12].encode())));

    let leaf = entry["leaf_hash"].as_str().expect("leaf hash").to_owned();
    let by_hash = get(served.address, &format!("/entries?format=json&q={}", &leaf[..12])).await.json();
    assert_eq!(indices(&by_hash), [12]);
    let manifest = hex::encode(manifest_hash());
    let naming_manifest = get(served.address, &format!("/entries?format=json&hash={manifest}")).await.json();
    let expected: Vec<u64> = (0u64..)
        .zip(entries())
        .filter(|(_, e)| pdc_dashboard::model::fields(e).iter().any(|f| f.value == manifest))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(indices(&naming_manifest), expected);
    assert_eq!(expected.len(), 6, "created, signed, three consents and the revocation");
    let h3_round_2 = get(served.address, "/entries?format=json&study=sepsis-2026&round=2&pdc=h3").await.json();
    let kinds: Vec<&str> =
        h3_round_2["entries"].as_array().expect("entries").iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["RoundOpened", "UpdateRejected"]);
    let by_index = get(served.address, "/entries?format=json&q=7").await.json();
    assert_eq!(indices(&by_index), [7]);
    // A key links to the entries that name it: h1's first key is registered, then rotated away from.
    let first_key = hex::encode(hospital("h1").public_key().to_bytes());
    let naming_key = get(served.address, &format!("/entries?format=json&hash={first_key}")).await.json();
    let kinds: Vec<&str> =
        naming_key["entries"].as_array().expect("entries").iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["MemberRegistered", "KeyRotated"]);
}

fn indices(list: &Value) -> Vec<u64> {
    list["entries"].as_array().expect("entries").iter().filter_map(|e| e["index"].as_u64()).collect()
}

#[tokio::test]
async fn without_a_pinned_log_key_there_is_no_verdict() {
    let folder = ledger_folder();
    let served = serve(Source::Folder(folder.path().into()), TrustPolicy::default()).await;
    let head = get(served.address, "/?format=json").await.json();
    assert_eq!(head["verdict"]["status"], json!("UNAVAILABLE"));
    let html = get(served.address, "/").await.body;
    assert!(html.contains("Verdict: UNAVAILABLE") && !html.contains("PASS"), "{html}");
}

#[tokio::test]
async fn a_ledger_signed_by_another_key_than_the_pinned_one_fails() {
    let folder = ledger_folder();
    let policy = TrustPolicy { log_key: Some(witness_identity().public_key()), ..pinned_policy() };
    let served = serve(Source::Folder(folder.path().into()), policy).await;
    let head = get(served.address, "/?format=json").await.json();
    assert_eq!(head["verdict"]["status"], json!("FAIL"));
    let rules: Vec<&str> =
        head["verdict"]["failures"].as_array().expect("failures").iter().filter_map(|f| f["rule"].as_str()).collect();
    assert!(rules.contains(&"checkpoint_signature"), "{rules:?}");
    assert_eq!(head["checkpoint"]["log_signature"]["valid"], json!(false));
}
