//! A Thunderbird mbox folder of arbitrary bytes, each message taken apart as `import
//! thunderbird:` does: no panic, and what it gives is made of the input's bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    popvault::import::thunderbird::fuzz_mbox_folder(data);
});
