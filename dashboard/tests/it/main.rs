//! The dashboard's integration tests: a fixed ledger written with the ledger crate's own store, served on
//! 127.0.0.1:0, read over real HTTP.

mod figures;
mod live;
mod pages;
mod security;
mod support;
mod tamper;
