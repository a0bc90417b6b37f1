//! The dashboard is read-only and loads nothing from elsewhere: every response carries the CSP, and every method
//! but GET and HEAD is refused with 405, on every path.

use pdc_dashboard::server::CONTENT_SECURITY_POLICY;
use pdc_dashboard::source::Source;

use crate::support::*;

const PAGES: [&str; 10] = [
    "/",
    "/studies",
    "/studies/sepsis-2026",
    "/entries",
    "/entries/3",
    "/hospitals",
    "/privacy",
    "/consents",
    "/rewards",
    "/style.css",
];

#[tokio::test]
async fn every_page_carries_the_csp_and_no_script() {
    let folder = ledger_folder();
    let served = serve(Source::Folder(folder.path().into()), pinned_policy()).await;
    for path in PAGES.into_iter().chain(["/nowhere", "/entries/999"]) {
        let reply = get(served.address, path).await;
        assert_eq!(reply.header("content-security-policy"), CONTENT_SECURITY_POLICY, "{path}");
        assert_eq!(reply.header("x-content-type-options"), "nosniff", "{path}");
        assert!(!reply.body.contains("<script"), "{path}");
        assert!(!reply.body.contains("style="), "{path}: an inline style would break the CSP");
        // Nothing is loaded from elsewhere: the only URL a page holds is the SVG namespace, which loads nothing.
        let body = reply.body.replace(r#"xmlns="http://www.w3.org/2000/svg""#, "");
        assert!(!body.contains("http://") && !body.contains("https://") && !body.contains("//"), "{path}");
    }
    assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none'; style-src 'self'"));
}

#[tokio::test]
async fn every_other_method_is_refused() {
    let folder = ledger_folder();
    let served = serve(Source::Folder(folder.path().into()), pinned_policy()).await;
    for path in PAGES.into_iter().chain(["/nowhere"]) {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let reply = request(served.address, method, path, None).await;
            assert_eq!(reply.status, 405, "{method} {path}");
            assert_eq!(reply.header("allow"), "GET, HEAD", "{method} {path}");
            assert!(!reply.header("content-security-policy").is_empty());
        }
        assert_eq!(
            request(served.address, "HEAD", path, None).await.status,
            if path == "/nowhere" { 404 } else { 200 }
        );
    }
}

#[tokio::test]
async fn unknown_pages_and_bad_queries_say_so_in_both_forms() {
    let folder = ledger_folder();
    let served = serve(Source::Folder(folder.path().into()), pinned_policy()).await;
    let missing = get(served.address, "/entries/999?format=json").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "No entry 999: the ledger has 48 entries.");
    assert_eq!(get(served.address, "/studies/nope").await.status, 404);
    let bad = get(served.address, "/entries?round=two&format=json").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "round \"two\" is not a number");
    assert_eq!(get(served.address, "/entries/x").await.status, 400);
}
