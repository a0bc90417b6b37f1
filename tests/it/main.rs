//! End-to-end tests of pdc: real gRPC over 127.0.0.1, in-process servers and separate processes of the built
//! binary.

mod adversary_agent;
mod adversary_audit;
mod agent;
mod bad_input;
mod central;
mod crash;
mod hostile;
mod keys;
mod ledger;
mod observability;
mod privacy;
mod processes;
mod push;
mod replay;
mod replayed;
mod resume;
mod retry;
mod rewards;
mod roles;
mod selection;
mod statistics;
mod support;
mod tls;
