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
    /// The date of the first (newest) Received header, UTC: the message's date when it has no
    /// usable Date header. Absent on lines written before popvault 0.2 recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_utc: Option<DateTime<Utc>>,
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
        // The date after the last `;` of the first Received header (RFC 5321 §4.4).
        let received_utc = first("Received").and_then(|h| {
            let value = h.get_value();
            parse_date(value.rsplit_once(';')?.1.trim())
        });
        Envelope {
            date,
            date_utc,
            message_id: text("Message-ID"),
            from: text("From"),
            subject: text("Subject"),
            received_utc,
        }
    }

    /// The message's date, the one every command uses (list, the --since/--until filters,
    /// restore's file times and INTERNALDATEs, export): its Date header, else its first
    /// Received header, else `first_seen` (when popvault first saw it). A date is used only when
    /// plausible: from 1971 (no earlier mail has a date to trust) to two days after popvault
    /// first saw the message (a date in the future is a broken clock or a forgery).
    pub fn message_time(&self, first_seen: DateTime<Utc>) -> DateTime<Utc> {
        let earliest = DateTime::from_timestamp(31_536_000, 0).expect("1971 is a valid time");
        let latest = first_seen + chrono::Duration::days(2);
        let plausible = |t: &DateTime<Utc>| (earliest..=latest).contains(t);
        self.date_utc
            .filter(plausible)
            .or(self.received_utc.filter(plausible))
            .unwrap_or(first_seen)
    }
}

/// Parses an RFC 5322 date: strictly first (chrono, with or without the day of the week, which
/// senders get wrong), then tolerantly (mailparse accepts the usual real-world damage). What the
/// tolerant parser makes of it must still say the day and year the text says: it also turns text
/// without a date into the epoch, `0001` into 2001 and 30 February into 1 March.
pub fn parse_date(raw: &str) -> Option<DateTime<Utc>> {
    let without_comments = impossible_zone_as_utc(strip_comments(raw));
    let raw = without_comments.as_str();
    let without_weekday = raw.split_once(", ").map_or(raw, |(_, rest)| rest);
    for text in [raw, without_weekday] {
        if let Ok(date) = DateTime::parse_from_rfc2822(text) {
            // A leap second (`23:59:60`, which chrono keeps) is recorded as :59, so that every
            // output (JSON, postmarks, file times) says the same and ISO 8601 readers take it.
            use chrono::Timelike;
            let date = date.to_utc();
            return date.with_nanosecond(date.nanosecond() % 1_000_000_000);
        }
    }
    let tolerant = |text: &str| {
        let secs = mailparse::dateparse(text).ok()?;
        let date = DateTime::from_timestamp(secs, 0)?;
        (says(text, &date) && clock_is_valid(text)).then_some(date)
    };
    // An unknown zone is read as UTC (RFC 5322 §4.3 says to treat unknown zones as -0000).
    tolerant(without_weekday).or_else(|| {
        let (rest, _zone) = without_weekday.trim_end().rsplit_once(' ')?;
        tolerant(&format!("{rest} +0000"))
    })
}

/// A numeric zone no clock uses (`+2400`, `-0075`: beyond ±14 hours, or 60 minutes and more)
/// is an unknown zone, read as UTC like any other (RFC 5322 §4.3).
fn impossible_zone_as_utc(text: String) -> String {
    let Some((rest, zone)) = text.rsplit_once(' ') else {
        return text;
    };
    let digits = zone
        .strip_prefix(['+', '-'])
        .filter(|d| d.len() == 4 && d.bytes().all(|b| b.is_ascii_digit()));
    match digits {
        Some(d)
            if d[..2].parse::<u32>().unwrap_or(99) > 14
                || d[2..].parse::<u32>().unwrap_or(99) > 59 =>
        {
            format!("{rest} +0000")
        }
        _ => text,
    }
}

/// Whether `date` has the day of the month and the year that `text` (`[Www, ]d Mmm yy[yy] ...`)
/// writes, give or take a day for the zone. A two-digit year (RFC 822) is checked by its last
/// two digits.
fn says(text: &str, date: &DateTime<Utc>) -> bool {
    use chrono::Datelike;
    let words: Vec<&str> = text.split_whitespace().collect();
    let number = |i: usize| words.get(i).and_then(|w| w.parse::<i32>().ok());
    let (day, year_word) = match number(0) {
        Some(d) if (1..=31).contains(&d) => (Some(d as u32), words.get(2)),
        _ => (None, words.iter().find(|w| w.len() == 4)),
    };
    let Some(year_word) = year_word.filter(|w| w.bytes().all(|b| b.is_ascii_digit())) else {
        return false;
    };
    let year: i32 = year_word.parse().unwrap_or(-1);
    let near = |d: DateTime<Utc>| {
        let year_ok = match year_word.len() {
            2 => d.year() % 100 == year,
            4 => d.year() == year,
            _ => false,
        };
        year_ok && day.is_none_or(|day| d.day() == day)
    };
    near(*date)
        || near(*date + chrono::Duration::days(1))
        || near(*date - chrono::Duration::days(1))
}

/// Whether the time of day in `text` (its word with a `:`) is one a clock shows: hours to 23,
/// minutes to 59, seconds to 60. The tolerant parser rolls `25:00` over into the next day.
fn clock_is_valid(text: &str) -> bool {
    let Some(clock) = text.split_whitespace().find(|w| w.contains(':')) else {
        return true;
    };
    let limits = [23, 59, 60];
    let fields: Vec<&str> = clock.split(':').collect();
    fields.len() <= 3
        && fields.iter().zip(limits).all(|(f, max)| {
            !f.is_empty()
                && f.bytes().all(|b| b.is_ascii_digit())
                && f.parse::<u32>().is_ok_and(|v| v <= max)
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
    fn the_message_time_is_date_then_received_then_first_seen_when_plausible() {
        let seen = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let m = b"Received: from a by b; Tue, 1 Jan 2019 10:00:00 +0200\r\nSubject: x\r\n\r\n";
        assert_eq!(
            Envelope::parse(m).message_time(seen).to_rfc3339(),
            "2019-01-01T08:00:00+00:00"
        );
        assert_eq!(Envelope::parse(b"X: y\r\n\r\n").message_time(seen), seen);
        // Implausible dates (year 3609, before 1971) give way to the next.
        let future = Envelope::parse(b"Date: Mon, 2 Jan 3609 00:00:00 +0000\r\n\r\n");
        assert_eq!(future.message_time(seen), seen);
        let old = Envelope::parse(
            b"Date: Mon, 2 Jan 1965 00:00:00 +0000\r\nReceived: x; Tue, 1 Jan 2019 10:00:00 +0000\r\n\r\n",
        );
        assert_eq!(
            old.message_time(seen).to_rfc3339(),
            "2019-01-01T10:00:00+00:00"
        );
    }

    #[test]
    fn odd_dates_parse_to_what_they_say_or_not_at_all() {
        let utc = |raw: &str| parse_date(raw).map(|d| d.to_rfc3339());
        // The wrong day of the week, before 1970: the date is still the date.
        assert_eq!(
            utc("Mon, 2 Jan 1969 00:00:00 +0000").as_deref(),
            Some("1969-01-02T00:00:00+00:00")
        );
        // Year 1 is year 1, not 2001 (and no message time: see message_time); 30 February is
        // no date, not 1 March.
        assert!(
            utc("Mon, 2 Jan 0001 00:00:00 +0000")
                .unwrap()
                .starts_with("0001-01-02")
        );
        assert_eq!(utc("Fri, 30 Feb 2024 10:00:00 +0000"), None);
        // RFC 822's two-digit year.
        assert_eq!(
            utc("18 Feb 01 12:29:13 AM").as_deref(),
            Some("2001-02-18T12:29:13+00:00")
        );
        // An impossible zone is read as an unknown one: UTC.
        assert_eq!(
            utc("Fri, 1 Mar 2024 10:00:00 +2400").as_deref(),
            Some("2024-03-01T10:00:00+00:00")
        );
        // A leap second is :59, so that ISO 8601 readers take it; hour 25 is no time.
        assert_eq!(
            utc("Sun, 31 Dec 2023 23:59:60 +0000").as_deref(),
            Some("2023-12-31T23:59:59+00:00")
        );
        assert_eq!(utc("Tue, 2 Jan 2024 25:00:00 +0000"), None);
        assert_eq!(utc("Tue, 2 Jan 2024 10:61 +0000"), None);
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
