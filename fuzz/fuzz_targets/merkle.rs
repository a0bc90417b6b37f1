//! Fuzzes inclusion and consistency proof verification against a real tree.
//!
//! The property is `pdc_ledger::fuzzing::merkle`, which the ledger's tests also replay on every corpus file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pdc_ledger::fuzzing::merkle(data);
});
