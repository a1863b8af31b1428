//! Maildir file names (the unique part and the flags).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    let (unique, flags) = popvault::import::split_maildir_name(&name);
    assert!(unique.len() + flags.map_or(0, |f| f.len() + 3) <= name.len());
});
