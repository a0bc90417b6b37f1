//! pdc's read-only governance dashboard: a ledger (a copied coordinator ledger folder or an export file) served as
//! pages a governance board reads in a browser, each with a JSON twin and a stable deep link.
//!
//! - [`source`]: the ledger's source, the auditor's trust policy and the [`source::Snapshot`] pages are rendered
//!   from, with the verdict of the whole-ledger audit (`pdc_ledger::audit`, called in one place);
//! - [`model`]: the views folded from the decoded entries (studies and rounds, privacy, consents, rewards,
//!   members), pure;
//! - [`svg`]: the charts, inline SVG generated here;
//! - [`pages`]: the HTML of each page (maud) from the same views the JSON twins serialise;
//! - [`server`]: the axum routes, GET and HEAD only, with a strict Content-Security-Policy;
//! - [`time`]: dates and ages from an injected clock.
//!
//! The dashboard writes nothing: the ledger folder is opened read-only, and no page carries a script.
//!
//! ```no_run
//! use std::sync::Arc;
//! use pdc_dashboard::server::{Dashboard, serve};
//! use pdc_dashboard::source::{Source, TrustPolicy};
//!
//! # async fn run() -> pdc_dashboard::Result<()> {
//! let policy = TrustPolicy { log_key: Some(TrustPolicy::parse_log_key(&"ab".repeat(32))?), ..Default::default() };
//! let dashboard = Dashboard::open(Source::File("ledger.pdcx".into()), policy, pdc_dashboard::time::system_clock(), None)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.map_err(pdc_dashboard::Error::Serve)?;
//! serve(listener, Arc::new(dashboard), std::future::pending()).await
//! # }
//! ```

pub mod model;
pub mod pages;
pub mod server;
pub mod source;
pub mod svg;
pub mod time;

/// Errors of the dashboard.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ledger folder or export file could not be read.
    #[error("cannot read the {source_name}: {detail}")]
    Source {
        /// The source, in words.
        source_name: String,
        /// Why.
        detail: String,
    },
    /// A trust-policy flag is malformed.
    #[error("{0}")]
    Policy(String),
    /// The HTTP server failed.
    #[error("the dashboard's HTTP server: {0}")]
    Serve(#[source] std::io::Error),
}

/// The dashboard's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `pdc dashboard`: loads `source`, audits it under `policy`, listens on `listen`, prints the address to open,
/// and serves until `shutdown` completes. `refresh_seconds` makes a ledger folder live (see
/// [`server::Dashboard::open`]).
pub async fn run(
    source: source::Source,
    policy: source::TrustPolicy,
    listen: std::net::SocketAddr,
    refresh_seconds: Option<u64>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let dashboard = tokio::task::spawn_blocking(move || {
        server::Dashboard::open(source, policy, time::system_clock(), refresh_seconds)
    })
    .await
    .map_err(|e| Error::Serve(std::io::Error::other(e)))??;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(Error::Serve)?;
    let address = listener.local_addr().map_err(Error::Serve)?;
    // Scripts and tests read this line to learn the port when `--listen` asks for port 0.
    println!("pdc dashboard on http://{address}/");
    server::serve(listener, std::sync::Arc::new(dashboard), shutdown).await
}
