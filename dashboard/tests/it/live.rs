//! A live ledger folder (`--refresh`): pages refresh themselves, and a page asked for after the refresh interval
//! shows what the coordinator appended meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pdc_dashboard::source::Source;
use pdc_ledger::entry::Entry;
use pdc_ledger::store::{RocksDbStore, Store};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_live_folder_is_read_again_once_its_snapshot_is_stale() {
    let folder = ledger_folder();
    let now = Arc::new(AtomicU64::new(NOW_MS));
    let clock = Arc::clone(&now);
    let served = serve_with(
        Source::Folder(folder.path().into()),
        pinned_policy(),
        Arc::new(move || clock.load(Ordering::SeqCst)),
        Some(30),
    )
    .await;
    let page = get(served.address, "/").await.body;
    assert!(page.contains(r#"<meta http-equiv="refresh" content="30">"#), "{page}");
    assert_eq!(get(served.address, "/?format=json").await.json()["size"], json!(48));

    // The coordinator appends a study after the last checkpoint; the dashboard holds no handle on the folder.
    {
        let mut store = RocksDbStore::open(folder.path()).expect("open for writing");
        let entry = Entry::StudyCreated { study_id: "follow-up".into(), manifest_hash: [9; 32] };
        store.append(&[entry.encode()]).expect("append");
    }
    now.fetch_add(10_000, Ordering::SeqCst);
    assert_eq!(get(served.address, "/?format=json").await.json()["size"], json!(48), "still fresh: not re-read");
    now.fetch_add(30_000, Ordering::SeqCst);
    let head = get(served.address, "/?format=json").await.json();
    assert_eq!(head["size"], json!(49));
    // The new entry is not sealed, so the audit cannot pass; it says how far the sealed log reaches.
    assert_eq!(head["verdict"]["status"], json!("UNSEALED TAIL"), "{head}");
    assert_eq!(head["verdict"]["unsealed"], json!([48, 49]));
    assert_eq!(head["checkpoint"]["unsealed_entries"], json!(1));
    let entry = get(served.address, "/entries/48?format=json").await.json();
    assert_eq!(entry["proof"]["status"], json!("not_sealed"));
}

#[tokio::test]
async fn a_fixed_source_does_not_refresh() {
    let folder = ledger_folder();
    let served = serve(Source::Folder(folder.path().into()), pinned_policy()).await;
    assert!(!get(served.address, "/").await.body.contains("http-equiv"));
}
