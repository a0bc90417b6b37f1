//! pdc-ledger's integration tests, one binary: the audit's trust policy and memory, the audit's rules, tamper
//! detection on RocksDB, crash safety under SIGKILL, group commit on RocksDB, the export file, and the fuzz
//! corpora replayed.

mod audit_policy;
mod audit_rules;
mod crash;
mod export_file;
mod fuzz_corpus;
mod group_commit;
mod support;
mod tamper;
