//! Catalog lines and segments (zstd frames of JSON lines) read from a damaged disk.
#![no_main]
use libfuzzer_sys::fuzz_target;
use popvault::archive::catalog::{self, CommitRecord, Entry};

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = serde_json::from_slice::<Entry>(data) {
        let again = serde_json::to_vec(&entry).unwrap();
        assert_eq!(serde_json::from_slice::<Entry>(&again).unwrap(), entry, "the codec round-trips");
    }
    let _ = serde_json::from_slice::<CommitRecord>(data);
    let (text, _problems) = catalog::decode_segment(data);
    for line in text.split(|&b| b == b'\n') {
        let _ = serde_json::from_slice::<Entry>(line);
    }
});
