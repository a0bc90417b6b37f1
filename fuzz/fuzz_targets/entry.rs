//! Fuzzes ledger entry decoding (`Entry::decode`).
//!
//! The property is `pdc_ledger::fuzzing::entry`, which the ledger's tests also replay on every corpus file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pdc_ledger::fuzzing::entry(data);
});
