//! pdc's hospital agent: it holds the PDC's identity and private data, consents to studies its policy allows,
//! trains on the tasks the coordinator sends, and returns signed updates. Patient rows never leave it: only the
//! model delta does.
//!
//! [`training`] is the pure part (task + model + local data → update); [`agent`] is the gRPC edge with its
//! reconnect loop, over TLS with [`tls`]; [`config`] reads `hospital.toml`; [`attack`] makes a hospital misbehave
//! for robustness tests.

pub mod agent;
pub mod attack;
pub mod config;
mod error;
pub mod spend;
pub mod tls;
pub mod training;

pub use agent::Agent;
pub use config::HospitalConfig;
pub use error::{Error, Result};
