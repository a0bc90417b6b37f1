//! A ledger folder with one entry's byte flipped underneath the store, as an intruder with disk access might:
//! the head page says FAIL and names the failing rule and the entry.

use pdc_dashboard::source::Source;
use pdc_ledger::store::COLUMN_FAMILIES;
use rocksdb::{DB, Options};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_flipped_entry_byte_fails_the_head_page_naming_the_entry() {
    let folder = ledger_folder();
    let target: u64 = 20;
    {
        let db = DB::open_cf(&Options::default(), folder.path(), COLUMN_FAMILIES).expect("raw open");
        let entries = db.cf_handle("entries").expect("entries");
        let mut bytes = db.get_cf(entries, target.to_be_bytes()).expect("read").expect("entry 20");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        db.put_cf(entries, target.to_be_bytes(), &bytes).expect("damage");
    }
    let served = serve(Source::Folder(folder.path().into()), pinned_policy()).await;
    let head = get(served.address, "/?format=json").await.json();
    assert_eq!(head["verdict"]["status"], json!("FAIL"));
    let failures = head["verdict"]["failures"].as_array().expect("failures");
    assert!(
        failures.iter().any(|f| f["rule"] == json!("leaf_mismatch") && f["entries"] == json!([target])),
        "{failures:?}"
    );
    let html = get(served.address, "/").await.body;
    assert!(html.contains("Verdict: FAIL"), "{html}");
    assert!(html.contains("<code>leaf_mismatch</code>"), "{html}");
    assert!(html.contains(&format!(r#"<a href="/entries/{target}">{target}</a>"#)), "{html}");
    // The entry's own page shows that its proof no longer reaches the signed root.
    let entry = get(served.address, &format!("/entries/{target}?format=json")).await.json();
    assert_eq!(entry["proof"]["status"], json!("failed"), "{entry}");
}
