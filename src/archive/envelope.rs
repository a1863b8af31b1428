//! `Envelope`: the few header fields the catalog keeps for listing and searching.
//!
//! Parsing is only a source of metadata: the archive stores the raw bytes whatever the parser
//! thinks of them, so every field is optional and no input makes this fail.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How much of a message is handed to the header parser. Headers beyond this are ignored for
/// metadata only (the stored bytes are complete); it bounds the work a hostile message can cause.
pub const HEADER_SCAN_LIMIT: usize = 256 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The first `Date:` header as written, or `None` when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// `date` parsed and converted to UTC; `None` when missing or unparsable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_utc: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// RFC 2047 decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// RFC 2047 decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl Envelope {
    pub fn parse(message: &[u8]) -> Envelope {
        let head = &message[..message.len().min(HEADER_SCAN_LIMIT)];
        let Ok((headers, _)) = mailparse::parse_headers(head) else {
            return Envelope::default();
        };
        let first = |name: &str| {
            headers
                .iter()
                .find(|h| h.get_key_ref().eq_ignore_ascii_case(name))
        };
        let text = |name: &str| first(name).map(|h| clean(&h.get_value()));
        let date = first("Date").map(|h| clean(&String::from_utf8_lossy(h.get_value_raw())));
        let date_utc = date.as_deref().and_then(parse_date);
        Envelope {
            date,
            date_utc,
            message_id: text("Message-ID"),
            from: text("From"),
            subject: text("Subject"),
        }
    }

    /// The time a restore gives the message: its Date, else the date of its first (newest)
    /// Received header, else `fallback` (when popvault first saw it).
    pub fn delivery_time(&self, message: &[u8], fallback: DateTime<Utc>) -> DateTime<Utc> {
        self.date_utc
            .or_else(|| received_date(message))
            .unwrap_or(fallback)
    }
}

/// The date after the last `;` of the first Received header (RFC 5321 §4.4).
pub fn received_date(message: &[u8]) -> Option<DateTime<Utc>> {
    let head = &message[..message.len().min(HEADER_SCAN_LIMIT)];
    let (headers, _) = mailparse::parse_headers(head).ok()?;
    let received = headers
        .iter()
        .find(|h| h.get_key_ref().eq_ignore_ascii_case("Received"))?;
    let value = received.get_value();
    parse_date(value.rsplit_once(';')?.1.trim())
}

/// Parses an RFC 5322 date: strictly first (chrono), then tolerantly (mailparse accepts the usual
/// real-world damage, but also turns text without a date into the epoch, which is refused).
pub fn parse_date(raw: &str) -> Option<DateTime<Utc>> {
    let without_comments = strip_comments(raw);
    let raw = without_comments.as_str();
    if let Ok(date) = DateTime::parse_from_rfc2822(raw) {
        return Some(date.to_utc());
    }
    let tolerant = |text: &str| {
        let secs = mailparse::dateparse(text).ok()?;
        if secs == 0 && !text.contains("1970") {
            return None;
        }
        DateTime::from_timestamp(secs, 0)
    };
    // An unknown zone is read as UTC (RFC 5322 §4.3 says to treat unknown zones as -0000).
    tolerant(raw).or_else(|| {
        let (rest, _zone) = raw.trim_end().rsplit_once(' ')?;
        tolerant(&format!("{rest} +0000"))
    })
}

/// Removes RFC 5322 comments such as `(EDT)`, which parsers otherwise trip over.
fn strip_comments(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut depth = 0usize;
    for c in raw.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Unfolds and trims a header value; control characters become spaces so that one catalog
/// field can never break a terminal line.
fn clean(value: &str) -> String {
    let unfolded: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    unfolded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The header block of a message: up to and including the blank line that ends it (the whole
/// message when there is none), as POP3 `TOP n 0` and IMAP `BODY[HEADER]` send it.
pub fn header_block(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &message[..2];
    }
    if message.starts_with(b"\n") {
        return &message[..1];
    }
    let crlf = message.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = message.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(c), Some(l)) if l + 1 < c => &message[..l + 2],
        (Some(c), _) => &message[..c + 4],
        (None, Some(l)) => &message[..l + 2],
        (None, None) => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_end_at_the_first_blank_line() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            b"A: 1\r\nB: 2\r\n\r\n"
        );
        assert_eq!(header_block(b"A: 1\n\nbody\n\n"), b"A: 1\n\n");
        assert_eq!(header_block(b"A: 1\r\n"), b"A: 1\r\n");
        // A message that starts with a blank line has an empty header block (Dovecot's
        // BODY[HEADER] of it is the blank line alone).
        assert_eq!(header_block(b"\r\nFrom: a\r\n\r\nbody"), b"\r\n");
    }

    #[test]
    fn reads_decoded_fields_and_utc_date() {
        let m =
            b"From: =?utf-8?q?J=C3=B6rg?= <j@example.org>\r\nSubject: =?iso-8859-1?q?caf=E9?=\r\n\
                  Date: Thu, 22 Aug 2002 12:36:23 +0100\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n";
        let e = Envelope::parse(m);
        assert_eq!(e.from.as_deref(), Some("Jörg <j@example.org>"));
        assert_eq!(e.subject.as_deref(), Some("café"));
        assert_eq!(e.message_id.as_deref(), Some("<a@b>"));
        assert_eq!(
            e.date_utc.unwrap().to_rfc3339(),
            "2002-08-22T11:36:23+00:00"
        );
    }

    #[test]
    fn delivery_time_falls_back_to_received_then_first_seen() {
        let seen = DateTime::from_timestamp(1_000, 0).unwrap();
        let m = b"Received: from a by b; Tue, 1 Jan 2019 10:00:00 +0200\r\nSubject: x\r\n\r\n";
        let e = Envelope::parse(m);
        assert_eq!(
            e.delivery_time(m, seen).to_rfc3339(),
            "2019-01-01T08:00:00+00:00"
        );
        assert_eq!(
            Envelope::parse(b"X: y\r\n\r\n").delivery_time(b"X: y\r\n\r\n", seen),
            seen
        );
    }

    #[test]
    fn bad_and_missing_dates_are_recorded_not_fatal() {
        let e = Envelope::parse(b"Date: not a date at all\r\n\r\n");
        assert_eq!(e.date.as_deref(), Some("not a date at all"));
        assert_eq!(e.date_utc, None);
        let odd_zone = Envelope::parse(b"Date: Tue, 12 Oct 2010 16:21:05 H0500\r\n\r\n");
        let commented = Envelope::parse(b"Date: Wed, 20 Sep 1995 00:19:00 (EDT) -0400\n\n");
        assert_eq!(
            commented.date_utc.unwrap().to_rfc3339(),
            "1995-09-20T04:19:00+00:00"
        );
        assert_eq!(
            odd_zone.date_utc.unwrap().to_rfc3339(),
            "2010-10-12T16:21:05+00:00"
        );
        assert_eq!(Envelope::parse(b""), Envelope::default());
        assert_eq!(Envelope::parse(b"\x00\xff\xfe garbage").date, None);
    }
}
