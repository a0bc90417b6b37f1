//! HTML snapshots of every page on the fixed ledger, with the clock fixed, so that a change to what a board sees
//! shows up in review. `UPDATE_EXPECT=1 cargo nextest run -p pdc-dashboard` rewrites them.

use expect_test::{ExpectFile, expect_file};
use pdc_dashboard::source::Source;

use crate::support::*;

/// Fetches `path` and compares its HTML with `expected`, the temporary folder's path replaced by `LEDGER`.
async fn snapshot(path: &str, expected: ExpectFile) {
    let folder = ledger_folder();
    let served = serve(Source::Folder(folder.path().into()), pinned_policy()).await;
    let reply = get(served.address, path).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    assert_eq!(reply.header("content-type"), "text/html; charset=utf-8");
    let page = reply.body.replace(&folder.path().display().to_string(), "LEDGER");
    expected.assert_eq(&page.replace("><", ">\n<"));
}

#[tokio::test]
async fn head_page() {
    snapshot("/", expect_file!["snapshots/head.html"]).await;
}

#[tokio::test]
async fn studies_page() {
    snapshot("/studies", expect_file!["snapshots/studies.html"]).await;
}

#[tokio::test]
async fn study_page() {
    snapshot("/studies/sepsis-2026", expect_file!["snapshots/study.html"]).await;
}

#[tokio::test]
async fn entry_page() {
    snapshot("/entries/12", expect_file!["snapshots/entry.html"]).await;
}

#[tokio::test]
async fn entries_search_page() {
    snapshot("/entries?study=sepsis-2026&round=2&pdc=h3", expect_file!["snapshots/entries.html"]).await;
}

#[tokio::test]
async fn privacy_page() {
    snapshot("/privacy", expect_file!["snapshots/privacy.html"]).await;
}

#[tokio::test]
async fn consents_page() {
    snapshot("/consents", expect_file!["snapshots/consents.html"]).await;
}

#[tokio::test]
async fn rewards_page() {
    snapshot("/rewards", expect_file!["snapshots/rewards.html"]).await;
}

#[tokio::test]
async fn hospitals_page() {
    snapshot("/hospitals", expect_file!["snapshots/hospitals.html"]).await;
}
