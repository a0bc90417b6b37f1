//! pdc's coordinator: study manifests, the round state machine, update validation, FedAvg, and the gRPC server.
//!
//! The cores ([`round`], [`aggregation`], [`manifest`], [`statistics`]) do no I/O and read no clock.
//! [`service::Coordinator`] holds the state and reads the clock; [`server`] is the tonic edge, over TLS with
//! [`tls`]; [`archive`] stores updates on disk.

pub mod access;
pub mod aggregation;
pub mod archive;
pub mod audit_server;
pub mod config;
pub mod consent;
pub mod consortium;
mod error;
pub mod ledger;
pub mod limits;
pub mod manifest;
pub mod metrics;
pub mod nonces;
pub mod pipeline;
pub mod recovery;
pub mod replay;
pub mod rewards;
pub mod round;
pub mod server;
pub mod service;
pub mod statistics;
pub mod tls;
pub mod valuation;

pub use error::{Error, Result, to_status};
pub use service::{Coordinator, CoordinatorConfig};
