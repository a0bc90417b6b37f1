//! pdc's hospital agent: it holds the PDC's identity and private data, consents to studies its policy allows,
//! trains on the tasks the coordinator sends, and returns signed updates. Patient rows never leave it: only the
//! model delta does.
//!
//! [`training`] is the pure part (task + model + local data → update); [`agent`] is the gRPC edge with its
//! reconnect loop, over TLS with [`tls`]; [`config`] reads `hospital.toml`; [`consents`] remembers what the PDC
//! signed and checks every task against it; [`spend`] keeps the table's privacy spend; [`attack`] makes a hospital
//! misbehave for robustness tests.
//!
//! The agent trusts nothing it is sent: a task is acted on only for a study it consented to, with the very manifest
//! it signed, within its conditions and budget, with sizes that fit that manifest; what it tells the coordinator
//! when it does not deliver is a [`FailureCategory`], never a detail of its table.

pub mod agent;
pub mod attack;
pub mod config;
pub mod consents;
mod durable;
mod error;
pub mod spend;
pub mod tls;
pub mod training;

pub use agent::Agent;
pub use config::HospitalConfig;
pub use error::{Error, FailureCategory, Result};
