//! IMAP responses from a hostile server, as a restore reads them: lines, literals (of any
//! claimed size), untagged CAPABILITY and FETCH answers, the tagged end. Nothing may panic, loop
//! or allocate what the bytes do not hold.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    popvault::restore::imap::fuzz_responses(data);
});
