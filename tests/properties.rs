//! Property tests of the codecs: POP3 dot-stuffing, mboxrd quoting, and the catalog encoding.

use popvault::archive::catalog::{Entry, Source, StoredAt, decode_segment, encode_segment};
use popvault::archive::{Digest, Envelope};
use popvault::import::mbox::MboxReader;
use popvault::pop3::codec::{BodyDecoder, BodyEvent};
use popvault::restore::mbox::write_message;
use proptest::prelude::*;

/// Lines of mail-like text, heavy on the characters the codecs care about.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop::sample::select(vec![
        &b"From "[..],
        b">From ",
        b">>From x 1",
        b".",
        b"..",
        b"a",
        b" ",
        b"\0",
        b"\xff",
        b"\r",
        b"From - Mon 3",
    ]);
    prop::collection::vec(prop::collection::vec(fragment, 0..5), 0..30).prop_map(|lines| {
        let mut m = Vec::new();
        for fragments in lines {
            for f in fragments {
                m.extend_from_slice(f);
            }
            // A lone CR before the line end would make it a CRLF of its own: keep lines clean.
            while m.last() == Some(&b'\r') {
                m.pop();
            }
            m.extend_from_slice(b"\r\n");
        }
        m
    })
}

/// What a POP3 server sends for RETR: dot-stuffed lines and the terminator.
fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn unstuff(wire: &[u8], chunk: usize) -> Vec<u8> {
    let mut decoder = BodyDecoder::new(false);
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for piece in wire.chunks(chunk.max(1)) {
        pending.extend_from_slice(piece);
        let mut at = 0;
        loop {
            let (used, event) = decoder.decode(&pending[at..]);
            match event {
                BodyEvent::Data(r) => out.extend_from_slice(&pending[at..][r]),
                BodyEvent::End => return out,
                BodyEvent::NeedMore => {
                    at += used;
                    break;
                }
            }
            at += used;
        }
        pending.drain(..at);
    }
    panic!("no terminator found")
}

proptest! {
    #[test]
    fn dot_stuffing_round_trips_at_any_chunk_size(m in message(), chunk in 1usize..64) {
        prop_assert_eq!(unstuff(&stuffed(&m), chunk), m);
    }

    #[test]
    fn mboxrd_quoting_round_trips(messages in prop::collection::vec(message(), 1..5)) {
        let mut mbox = Vec::new();
        let t = chrono::DateTime::from_timestamp(1_000_000_000, 0).unwrap();
        for m in &messages {
            let mut with_header = b"Subject: x\r\n\r\n".to_vec();
            with_header.extend_from_slice(m);
            write_message(&mut mbox, &with_header, t).unwrap();
        }
        let mut reader = MboxReader::new(&mbox[..], true);
        for m in &messages {
            let mut with_header = b"Subject: x\r\n\r\n".to_vec();
            with_header.extend_from_slice(m);
            let read = reader.next_message().unwrap().expect("a message per message written");
            prop_assert_eq!(read.bytes, with_header);
        }
        prop_assert!(reader.next_message().unwrap().is_none());
    }

    #[test]
    fn catalog_lines_and_segments_round_trip(
        uidl in "[!-~]{1,70}",
        subject in any::<String>(),
        n in 1usize..250,
    ) {
        let entries: Vec<Entry> = (0..n)
            .map(|i| Entry {
                id: Digest::of(&i.to_le_bytes()),
                size: i as u64,
                source: Source::Pop3 { account: "a".into(), uidl: Some(uidl.clone()), list_size: None },
                first_seen: chrono::DateTime::from_timestamp(i as i64, 0).unwrap(),
                flags: None,
                envelope: Envelope { subject: Some(subject.clone()), ..Envelope::default() },
                stored: Some(StoredAt { pack: "p".into(), offset: i as u64, stored_len: 1 }),
            })
            .collect();
        let (text, problems) = decode_segment(&encode_segment(&entries).unwrap());
        prop_assert!(problems.is_empty());
        let back: Vec<Entry> = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        prop_assert_eq!(back, entries);
    }
}
