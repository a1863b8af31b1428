//! mbox splitting and mboxrd unquoting of arbitrary files: no panic, and every byte of a message
//! comes from the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use popvault::import::mbox::MboxReader;

fuzz_target!(|data: &[u8]| {
    let mut reader = MboxReader::new(data, true);
    let mut total = 0;
    let mut last_index = None;
    while let Ok(Some(m)) = reader.next_message() {
        total += m.bytes.len();
        assert!(last_index.is_none_or(|i| m.index == i + 1));
        last_index = Some(m.index);
        assert!((m.offset as usize) < data.len().max(1));
    }
    assert!(total <= data.len());
});
