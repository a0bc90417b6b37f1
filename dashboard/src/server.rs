//! The HTTP edge: axum routes for the pages, each with its JSON twin, behind a layer that refuses every method but
//! GET and HEAD and sets the Content-Security-Policy and the other security headers on every response.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::Markup;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::model::{self, EntryQuery};
use crate::pages::{self, Frame};
use crate::source::{Snapshot, Source, TrustPolicy};
use crate::time::Clock;
use crate::{Error, Result};

/// The Content-Security-Policy of every response: nothing may load but the server's own stylesheet and `data:`
/// images, no script at all, forms only to the server itself, and no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A dashboard: its source, the auditor's trust policy, its clock, and the snapshot pages are rendered from.
pub struct Dashboard {
    source: Source,
    policy: TrustPolicy,
    clock: Clock,
    refresh_seconds: Option<u64>,
    snapshot: RwLock<Arc<Snapshot>>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("source", &self.source)
            .field("refresh_seconds", &self.refresh_seconds)
            .finish()
    }
}

impl Dashboard {
    /// Loads `source` and audits it under `policy`. With `refresh_seconds` the source is live: it is read again
    /// when a page is asked for and the snapshot is older than that, and pages refresh themselves as often.
    pub fn open(source: Source, policy: TrustPolicy, clock: Clock, refresh_seconds: Option<u64>) -> Result<Self> {
        let snapshot = Snapshot::load(&source, policy.clone(), clock())?;
        Ok(Self { source, policy, clock, refresh_seconds, snapshot: RwLock::new(Arc::new(snapshot)) })
    }

    /// The snapshot to render from: the current one, or for a live source a fresh one once it is stale. A source
    /// that cannot be read again leaves the last good snapshot in place.
    pub async fn snapshot(self: &Arc<Self>) -> Arc<Snapshot> {
        let current = Arc::clone(&self.snapshot.read().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let Some(seconds) = self.refresh_seconds else { return current };
        let now = (self.clock)();
        if now.saturating_sub(current.loaded_at_ms) < seconds.saturating_mul(1000) {
            return current;
        }
        let dashboard = Arc::clone(self);
        // Reading and auditing a ledger is blocking work.
        let loaded =
            tokio::task::spawn_blocking(move || Snapshot::load(&dashboard.source, dashboard.policy.clone(), now)).await;
        match loaded {
            Ok(Ok(fresh)) => {
                let fresh = Arc::new(fresh);
                *self.snapshot.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::clone(&fresh);
                fresh
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "the ledger could not be read again; showing the last snapshot");
                current
            }
            Err(error) => {
                tracing::warn!(%error, "reloading the ledger failed; showing the last snapshot");
                current
            }
        }
    }

    fn frame(&self, snapshot: &Snapshot) -> Frame {
        Frame { source: snapshot.source.clone(), refresh_seconds: self.refresh_seconds, now_ms: (self.clock)() }
    }
}

/// The dashboard's routes, with the read-only and security-header layer.
pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(head))
        .route("/studies", get(studies))
        .route("/studies/{id}", get(study))
        .route("/entries", get(entries))
        .route("/entries/{index}", get(entry))
        .route("/hospitals", get(hospitals))
        .route("/privacy", get(privacy))
        .route("/consents", get(consents))
        .route("/rewards", get(rewards))
        .route("/style.css", get(style))
        .fallback(not_found)
        .layer(middleware::from_fn(read_only))
        .with_state(dashboard)
}

/// Serves the dashboard on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    dashboard: Arc<Dashboard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router(dashboard)).with_graceful_shutdown(shutdown).await.map_err(Error::Serve)
}

/// Refuses every method but GET and HEAD with 405, and sets the security headers on every response.
async fn read_only(request: Request, next: Next) -> Response {
    let mut response = if request.method() == Method::GET || request.method() == Method::HEAD {
        next.run(request).await
    } else {
        let mut refused =
            (StatusCode::METHOD_NOT_ALLOWED, "the dashboard is read-only: GET and HEAD only\n").into_response();
        refused.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        refused
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

type Params = Query<BTreeMap<String, String>>;

/// Whether the client asked for the JSON twin: `?format=json`, or an `Accept` that names JSON and not HTML.
fn wants_json(params: &BTreeMap<String, String>, headers: &HeaderMap) -> bool {
    if let Some(format) = params.get("format") {
        return format == "json";
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    accept.contains("application/json") && !accept.contains("text/html")
}

/// The page as HTML, or its view as JSON.
fn respond<T: Serialize>(json: bool, status: StatusCode, view: &T, html: impl FnOnce(&T) -> Markup) -> Response {
    if json {
        match serde_json::to_string_pretty(view) {
            Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body + "\n").into_response(),
            Err(error) => {
                (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot serialise the view: {error}\n")).into_response()
            }
        }
    } else {
        (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html(view).into_string()).into_response()
    }
}

async fn head(State(dashboard): State<Arc<Dashboard>>, Query(params): Params, headers: HeaderMap) -> Response {
    let snapshot = dashboard.snapshot().await;
    let frame = dashboard.frame(&snapshot);
    let view = pages::head(&snapshot, frame.now_ms);
    respond(wants_json(&params, &headers), StatusCode::OK, &view, |v| pages::head_html(&frame, v))
}

/// The studies list's JSON twin.
#[derive(Serialize)]
struct StudiesJson<'a> {
    studies: &'a [model::StudySummary],
}

async fn studies(State(dashboard): State<Arc<Dashboard>>, Query(params): Params, headers: HeaderMap) -> Response {
    let snapshot = dashboard.snapshot().await;
    let frame = dashboard.frame(&snapshot);
    let summaries: Vec<model::StudySummary> =
        model::studies(&snapshot.decoded, &snapshot.seals).into_iter().map(|s| s.summary).collect();
    let view = StudiesJson { studies: &summaries };
    respond(wants_json(&params, &headers), StatusCode::OK, &view, |v| pages::studies_html(&frame, v.studies))
}

async fn study(
    State(dashboard): State<Arc<Dashboard>>,
    Path(id): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let snapshot = dashboard.snapshot().await;
    let frame = dashboard.frame(&snapshot);
    let json = wants_json(&params, &headers);
    let Some(study) = model::studies(&snapshot.decoded, &snapshot.seals).into_iter().find(|s| s.summary.id == id)
    else {
        return missing(json, &frame, format!("No study {id:?} in this ledger."));
    };
    let consents = model::consents(&snapshot.decoded, &snapshot.seals).into_iter().filter(|c| c.study == id).collect();
    let view = pages::StudyPage { study, consents };
    respond(json, StatusCode::OK, &view, |v| pages::study_html(&frame, v))
}

async fn entries(State(dashboard): State<Arc<Dashboard>>, Query(params): Params, headers: HeaderMap) -> Response {
    let snapshot = dashboard.snapshot().await;
    let frame = dashboard.frame(&snapshot);
    let json = wants_json(&params, &headers);
    let text = |name: &str| params.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let number = |name: &str| text(name).map(|v| v.parse::<u64>().map_err(|_| format!("{name} {v:?} is not a number")));
    let (round, page) = match (number("round").transpose(), number("page").transpose()) {
        (Ok(round), Ok(page)) => (round, page.unwrap_or(0)),
        (Err(message), _) | (_, Err(message)) => return bad_request(json, &frame, message),
    };
    let Ok(round) = round.map(u32::try_from).transpose() else {
        return bad_request(json, &frame, "round is out of range".into());
    };
    let query = EntryQuery { q: text("q"), hash: text("hash"), study: text("study"), round, pdc: text("pdc") };
    let view = pages::entry_list(&snapshot, query, usize::try_from(page).unwrap_or(usize::MAX));
    respond(json, StatusCode::OK, &view, |v| pages::entry_list_html(&frame, v))
}

async fn entry(
    State(dashboard): State<Arc<Dashboard>>,
    Path(index): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let snapshot = dashboard.snapshot().await;
    let frame = dashboard.frame(&snapshot);
    let json = wants_json(&params, &headers);
    let Ok(index) = index.parse::<u64>() else {
        return bad_request(json, &frame, format!("{index:?} is not an entry index"));
    };
    match pages::entry(&snapshot, index) {
        Some(view) => respond(json, StatusCode::OK, &view, |v| pages::entry_html(&frame, v)),
        None => missing(json, &frame, format!("No entry {index}: the ledger has {} entries.", snapshot.entries.len())),
    }
}

/// The hospitals page's JSON twin.
#[derive(Serialize)]
struct HospitalsJson {
    members: Vec<model::HospitalView>,
}

async fn hospitals(State(dashboard): State<Arc<Dashboard>>, Query(params): Params, headers: HeaderMap) -> Response {
    let snapshot = dashboard.snapshot().await;
    let frame = dashboard.frame(&snapshot);
    let view = HospitalsJson { members: model::hospitals(&snapshot.decoded, &snapshot.seals) };
    respond(wants_json(&params, &headers), StatusCode::OK, &view, |v| pages::hospitals_html(&frame, &v.members))
}

async fn privacy(State(dashboard): State<Arc<Dashboard>>, Query(params): Params, headers: HeaderMap) -> Response {
    let snapshot = dashboard.snapshot().await;
    let frame = dashboard.frame(&snapshot);
    let view = model::privacy(&snapshot.decoded);
    respond(wants_json(&params, &headers), StatusCode::OK, &view, |v| pages::privacy_html(&frame, v))
}

/// The consent register's JSON twin.
#[derive(Serialize)]
struct ConsentsJson {
    consents: Vec<model::ConsentRow>,
}

async fn consents(State(dashboard): State<Arc<Dashboard>>, Query(params): Params, headers: HeaderMap) -> Response {
    let snapshot = dashboard.snapshot().await;
    let frame = dashboard.frame(&snapshot);
    let view = ConsentsJson { consents: model::consents(&snapshot.decoded, &snapshot.seals) };
    respond(wants_json(&params, &headers), StatusCode::OK, &view, |v| pages::consents_html(&frame, &v.consents))
}

/// The rewards page's JSON twin.
#[derive(Serialize)]
struct RewardsJson {
    studies: Vec<model::StudyRewards>,
}

async fn rewards(State(dashboard): State<Arc<Dashboard>>, Query(params): Params, headers: HeaderMap) -> Response {
    let snapshot = dashboard.snapshot().await;
    let frame = dashboard.frame(&snapshot);
    let view = RewardsJson { studies: model::rewards(&snapshot.decoded) };
    respond(wants_json(&params, &headers), StatusCode::OK, &view, |v| pages::rewards_html(&frame, &v.studies))
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], pages::STYLE).into_response()
}

async fn not_found(State(dashboard): State<Arc<Dashboard>>, Query(params): Params, headers: HeaderMap) -> Response {
    let snapshot = dashboard.snapshot().await;
    let frame = dashboard.frame(&snapshot);
    missing(wants_json(&params, &headers), &frame, "No such page.".into())
}

/// A problem's JSON twin.
#[derive(Serialize)]
struct Problem {
    error: String,
}

fn missing(json: bool, frame: &Frame, message: String) -> Response {
    respond(json, StatusCode::NOT_FOUND, &Problem { error: message }, |p| {
        pages::problem_html(frame, "Not found", &p.error)
    })
}

fn bad_request(json: bool, frame: &Frame, message: String) -> Response {
    respond(json, StatusCode::BAD_REQUEST, &Problem { error: message }, |p| {
        pages::problem_html(frame, "Bad request", &p.error)
    })
}
