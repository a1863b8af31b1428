//! What search reads of a message (MIME decoding, charsets, HTML to text) on arbitrary bytes: no
//! panic, and the body text stays within its bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use popvault::archive::text::{MAX_BODY_TEXT, html_to_text, search_text};

fuzz_target!(|data: &[u8]| {
    let text = search_text(data);
    // The bound, and the line break after the last piece.
    assert!(text.body.len() <= MAX_BODY_TEXT + 1);
    if let Ok(html) = std::str::from_utf8(data) {
        let _ = html_to_text(html);
    }
});
