//! Fuzzes checkpoint notes, their signatures and co-signatures, and a witness co-signing them.
//!
//! The property is `pdc_ledger::fuzzing::checkpoint`, which the ledger's tests also replay on every corpus file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pdc_ledger::fuzzing::checkpoint(data);
});
