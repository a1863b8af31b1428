//! Pack files from a damaged disk or a hostile copy: record headers, bounded decompression,
//! and the record-by-record salvage of `repair`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use popvault::archive::pack::{self, RecordHeader, RECORD_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    for (offset, header) in popvault::archive::repair::salvage(data) {
        assert!(offset as usize + RECORD_HEADER_LEN as usize + header.stored_len as usize <= data.len());
    }
    if data.len() >= RECORD_HEADER_LEN as usize {
        let bytes: &[u8; RECORD_HEADER_LEN as usize] = data[..RECORD_HEADER_LEN as usize].try_into().unwrap();
        if let Some(header) = RecordHeader::decode(bytes) {
            // A crafted header may claim any length: decompression stays bounded by it.
            let bounded = RecordHeader { raw_len: header.raw_len.min(1 << 20), ..header };
            let mut out = Vec::new();
            let _ = pack::RecordCodec::open(&bounded, &mut &data[RECORD_HEADER_LEN as usize..], &mut out);
            assert!(out.len() as u64 <= bounded.raw_len);
        }
    }
});
