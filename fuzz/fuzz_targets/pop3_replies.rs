//! POP3 replies from a hostile server: status lines, streamed message bodies (split at an
//! arbitrary point), CAPA, LIST, UIDL and STAT listings. Nothing may panic or loop.
#![no_main]
use libfuzzer_sys::fuzz_target;
use popvault::pop3::codec::{self, BodyDecoder, BodyEvent, Capabilities};

fuzz_target!(|data: &[u8]| {
    let _ = codec::parse_reply(data);
    let split = data.first().map_or(0, |b| *b as usize) % (data.len() + 1);
    for bare_lf in [false, true] {
        let mut decoder = BodyDecoder::new(bare_lf);
        let mut out = Vec::new();
        for chunk in [&data[..split], &data[split..]] {
            let mut at = 0;
            while at < chunk.len() {
                match decoder.decode(&chunk[at..]) {
                    (0, BodyEvent::NeedMore) => break,
                    (used, BodyEvent::Data(range)) => {
                        out.extend_from_slice(&chunk[at..][range]);
                        at += used;
                    }
                    (_, BodyEvent::End) => break,
                    (used, _) => at += used.max(1),
                }
            }
        }
        assert!(out.len() <= data.len(), "unstuffing never adds bytes");
    }
    let text = String::from_utf8_lossy(data);
    let caps = Capabilities::parse(text.lines());
    let _ = caps.sasl_mechanisms();
    let _ = codec::parse_stat(&text);
    for line in data.split(|&b| b == b'\n') {
        let _ = codec::parse_list_line(line);
        let _ = codec::parse_uidl_line(line);
    }
});
