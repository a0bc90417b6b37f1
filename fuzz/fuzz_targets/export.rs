//! Fuzzes export file parsing (`export::parse`) and the audit of what parses.
//!
//! The property is `pdc_ledger::fuzzing::export`, which the ledger's tests also replay on every corpus file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pdc_ledger::fuzzing::export(data);
});
