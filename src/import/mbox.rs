//! Splitting an mbox file into messages, reading mboxrd, mboxo, `From - ` (Thunderbird) and
//! Content-Length (mboxcl) variants.
//!
//! Rules (doc/FORMAT.md repeats them for users):
//! - A postmark is `From SENDER DATE`, the date holding a month name, a time (`hh:mm`) and a
//!   four-digit year (asctime as mbox writers write it, or an RFC 5322 date), or a bare `From SENDER` (what
//!   Thunderbird and trimmed Takeout files have) or `From ` alone (Thunderbird 128). The first postmark of the file starts the first
//!   message; it may follow a UTF-8 BOM and blank lines.
//! - A later dated postmark starts a message after a blank line, or when the next line is
//!   header-like (`Name:`) or a quoted `>From ` line; a later bare one only before a
//!   header-like line. So body lines such as `From Russia with love` or
//!   `From what I heard, 3 people came.` do not split a message. A split without the blank line
//!   every mbox writer puts before a postmark is doubtful: it is reported.
//! - Inside a message whose `Content-Length` header is present, no split happens before that many
//!   body bytes have been read (mboxcl: unquoted `From ` lines in bodies), unless the length turns
//!   out wrong (no message starts where it ends): then the first postmark it hid is used.
//! - The `From ` line and the one blank line before the next `From ` line (or EOF) are not part of
//!   the message. Every line that matches `>+From ` loses one `>` (mboxrd unquoting), unless `raw`.
//!
//! Memory: one message at a time.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read};

/// One message split out of an mbox file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MboxMessage {
    /// 0-based position in the file.
    pub index: u64,
    /// Byte offset of its `From ` line.
    pub offset: u64,
    /// The `From ` line without its line ending (envelope sender and date).
    pub from_line: String,
    /// Whether the `From ` line ended in CRLF (Thunderbird 128 and later write it so).
    pub from_line_crlf: bool,
    /// The blank line that ended it in the file (not part of `bytes`): `Some(true)` for CRLF,
    /// `Some(false)` for LF, `None` when there was none (the last message of a file cut short,
    /// or still being written).
    pub blank_after: Option<bool>,
    pub bytes: Vec<u8>,
}

/// The largest message an mbox may hold: a longer one (a damaged file, a run of zeros after a
/// crash) is an error rather than a demand for that much memory.
pub const MAX_MESSAGE: u64 = 1 << 30;

/// A raw line of the file and the offset it starts at.
type Line = (u64, Vec<u8>);

pub struct MboxReader<R> {
    input: R,
    /// Lines read ahead (or pushed back), with their file offsets.
    pending: VecDeque<(u64, Vec<u8>)>,
    offset: u64,
    index: u64,
    unquote: bool,
    started: bool,
    /// Bytes before the first `From ` line that were not blank (reported as a warning).
    pub skipped_bytes: u64,
    /// Offsets of the postmarks that started a message without a blank line before them, or
    /// after a `Content-Length` that proved wrong: splits a user may want to check.
    pub doubtful_splits: Vec<u64>,
}

impl<R: BufRead> MboxReader<R> {
    pub fn new(input: R, unquote: bool) -> Self {
        Self::starting_at(input, unquote, 0)
    }

    /// A reader of `input` positioned at byte `offset` of its file (where a postmark starts):
    /// the offsets it gives are the file's.
    pub fn starting_at(input: R, unquote: bool, offset: u64) -> Self {
        MboxReader {
            input,
            pending: VecDeque::new(),
            offset,
            index: 0,
            unquote,
            started: false,
            skipped_bytes: 0,
            doubtful_splits: Vec::new(),
        }
    }

    fn read_line(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        if let Some(line) = self.pending.pop_front() {
            return Ok(Some(line));
        }
        let mut line = Vec::new();
        let n = (&mut self.input)
            .take(MAX_MESSAGE + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        if n as u64 > MAX_MESSAGE {
            return Err(too_large(self.offset));
        }
        let at = self.offset;
        self.offset += n as u64;
        Ok(Some((at, line)))
    }

    fn peek_line(&mut self) -> io::Result<Option<&[u8]>> {
        if self.pending.is_empty()
            && let Some(line) = self.read_line()?
        {
            self.pending.push_back(line);
        }
        Ok(self.pending.front().map(|(_, l)| l.as_slice()))
    }

    /// Whether `line` (just read, not the first of the file) starts a new message (the rules
    /// above).
    fn is_separator(&mut self, line: &[u8], after_blank: bool) -> io::Result<bool> {
        Ok(match postmark(line) {
            None => false,
            Some(Postmark::Dated) if after_blank => true,
            // Without the blank line before it, only a header (or a quoted `From ` line: a
            // copied postmark) after it makes a message; a blank line would make an empty one.
            Some(Postmark::Dated) => self
                .peek_line()?
                .is_some_and(|next| is_header_like(next) || is_quoted_from(next)),
            Some(Postmark::Bare) => self.peek_line()?.is_some_and(is_header_like),
        })
    }

    pub fn next_message(&mut self) -> io::Result<Option<MboxMessage>> {
        let (offset, from_line) = if self.started {
            match self.read_line()? {
                Some(l) => l,
                None => return Ok(None),
            }
        } else {
            self.started = true;
            loop {
                let Some((at, mut line)) = self.read_line()? else {
                    return Ok(None);
                };
                if at == 0 && line.starts_with(b"\xEF\xBB\xBF") {
                    line.drain(..3);
                }
                if postmark(&line).is_some() {
                    break (at, line);
                }
                if !is_blank(&line) {
                    self.skipped_bytes += line.len() as u64;
                }
            }
        };
        let mut bytes = Vec::new();
        let mut in_headers = true;
        let mut content_length: Option<u64> = None;
        let mut body_len = 0u64;
        let mut prev_blank = false;
        // Postmarks skipped because Content-Length said they were body lines: where `bytes` was
        // at the first one, and the raw lines read since, to give back if the header lied.
        let mut held: Option<(usize, Vec<Line>)> = None;
        // Where a `>` was removed from a `>From ` line, and whether the body holds a `From `
        // line its writer left unquoted: a writer that relies on Content-Length (mutt) quotes
        // nothing, so its `>From ` lines are the message's own.
        let mut unquoted_at: Vec<usize> = Vec::new();
        let mut unquoted_from_in_body = false;
        let mut length_lied = false;
        while let Some((at, line)) = self.read_line()? {
            let inside_by_length = !in_headers && content_length.is_some_and(|cl| body_len < cl);
            // Where a Content-Length ends exactly, no blank line is expected (Netscape wrote
            // none).
            let at_length_end = !in_headers && content_length == Some(body_len);
            let postmark = line.starts_with(b"From ") && self.is_separator(&line, prev_blank)?;
            if postmark && !inside_by_length {
                held = None; // Content-Length (if any) was right: what it hid were body lines
                if !prev_blank && !at_length_end {
                    self.doubtful_splits.push(at);
                }
                self.pending.push_front((at, line));
                break;
            }
            if !inside_by_length && held.is_some() && !is_blank(&line) {
                // Content-Length was reached and no message starts here: the header lied, so
                // the first postmark it hid starts the next message after all.
                let (cut, lines) = held.take().expect("checked");
                bytes.truncate(cut);
                length_lied = true;
                self.doubtful_splits
                    .extend(lines.first().map(|(at, _)| *at));
                self.pending.push_front((at, line));
                for l in lines.into_iter().rev() {
                    self.pending.push_front(l);
                }
                break;
            }
            if postmark && held.is_none() {
                held = Some((bytes.len(), Vec::new()));
            }
            if let Some((_, lines)) = &mut held {
                lines.push((at, line.clone()));
            }
            if in_headers {
                if is_blank(&line) {
                    in_headers = false;
                } else if let Some(v) = header_value(&line, b"content-length") {
                    content_length = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                }
            } else {
                body_len += line.len() as u64;
            }
            prev_blank = is_blank(&line);
            if !in_headers && line.starts_with(b"From ") {
                unquoted_from_in_body = true;
            }
            if bytes.len() as u64 + line.len() as u64 > MAX_MESSAGE {
                return Err(too_large(offset));
            }
            if self.unquote && is_quoted_from(&line) {
                unquoted_at.push(bytes.len());
                bytes.extend_from_slice(&line[1..]);
            } else {
                bytes.extend_from_slice(&line);
            }
        }
        // Content-Length right (the body ends there, or one blank separator line later), and
        // the writer quoted nothing: the `>` removed were the message's own.
        let length_right = content_length.is_some_and(|cl| {
            body_len == cl || (prev_blank && body_len > cl && body_len - cl <= 2)
        });
        if unquoted_from_in_body && length_right && !length_lied {
            for &at in unquoted_at.iter().rev() {
                bytes.insert(at, b'>');
            }
        }
        if let Some((cut, lines)) =
            held.filter(|_| !in_headers && content_length.is_some_and(|cl| body_len < cl))
        {
            // The file ended before Content-Length did: the header lied (see above).
            bytes.truncate(cut);
            self.doubtful_splits
                .extend(lines.first().map(|(at, _)| *at));
            for l in lines.into_iter().rev() {
                self.pending.push_front(l);
            }
        }
        // The blank line that separates messages belongs to the mbox, not to the message.
        let blank_after = if bytes.ends_with(b"\n\r\n") {
            bytes.truncate(bytes.len() - 2);
            Some(true)
        } else if bytes.ends_with(b"\n\n") || bytes == b"\n" {
            bytes.truncate(bytes.len() - 1);
            Some(false)
        } else {
            None
        };
        let from_line_crlf = from_line.ends_with(b"\r\n");
        let from_line = String::from_utf8_lossy(trim_eol(&from_line)).into_owned();
        let index = self.index;
        self.index += 1;
        Ok(Some(MboxMessage {
            index,
            offset,
            from_line,
            from_line_crlf,
            blank_after,
            bytes,
        }))
    }
}

fn too_large(offset: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the message at byte {offset} is larger than {} GiB: the file is damaged there (popvault imports no message that large from an mbox)",
            MAX_MESSAGE >> 30
        ),
    )
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_blank(line: &[u8]) -> bool {
    trim_eol(line).is_empty()
}

/// What kind of postmark a `From ` line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Postmark {
    /// `From SENDER DATE`, the date with a time (`hh:mm`) and a four-digit year.
    Dated,
    /// `From SENDER` and nothing else.
    Bare,
}

/// Whether `line` is a postmark, and which kind.
pub fn postmark(line: &[u8]) -> Option<Postmark> {
    let rest = trim_eol(line.strip_prefix(b"From ")?);
    let sender_len = rest
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(rest.len());
    let date = &rest[sender_len..];
    // Bare: `From SENDER`, or `From ` and nothing else (Thunderbird 128's separator).
    if date.iter().all(u8::is_ascii_whitespace) {
        return (sender_len > 0 || rest.is_empty()).then_some(Postmark::Bare);
    }
    has_time_and_year(date).then_some(Postmark::Dated)
}

/// Whether `text` reads as a date: an English month name (`Jan`...`Dec`, a word of its own),
/// a time (one or two digits, `:`, two digits) and a year (a run of exactly four digits), as
/// asctime and RFC 5322 dates have.
fn has_time_and_year(text: &[u8]) -> bool {
    const MONTHS: [&[u8]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    let month = text
        .split(|b| !b.is_ascii_alphabetic())
        .any(|word| MONTHS.iter().any(|m| word.eq_ignore_ascii_case(m)));
    if !month {
        return false;
    }
    // Runs of digits: (start, length).
    let mut runs = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let len = text[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if len > 0 {
            runs.push((i, len));
        }
        i += len.max(1);
    }
    let year = runs.iter().any(|&(_, len)| len == 4);
    let time = runs.windows(2).any(|w| {
        let ((hour, hour_len), (minute, minute_len)) = (w[0], w[1]);
        (1..=2).contains(&hour_len)
            && text[hour + hour_len] == b':'
            && minute == hour + hour_len + 1
            && minute_len == 2
    });
    year && time
}

fn is_header_like(line: &[u8]) -> bool {
    let name_len = line.iter().position(|&b| b == b':').unwrap_or(0);
    name_len > 0 && line[..name_len].iter().all(|&b| (33..=126).contains(&b))
}

fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    line[..colon]
        .eq_ignore_ascii_case(name)
        .then(|| trim_eol(&line[colon + 1..]))
}

fn is_quoted_from(line: &[u8]) -> bool {
    let quotes = line.iter().take_while(|&&b| b == b'>').count();
    quotes > 0 && line[quotes..].starts_with(b"From ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "Mon Jan  1 00:00:00 2024";
    const D2: &str = "Tue Jan  2 10:11:12 2024";
    const D3: &str = "Wed, 3 Jan 2024 23:59 +0100";

    fn split(input: &[u8]) -> Vec<Vec<u8>> {
        let mut r = MboxReader::new(input, true);
        let mut out = Vec::new();
        while let Some(m) = r.next_message().unwrap() {
            out.push(m.bytes);
        }
        out
    }

    #[test]
    fn splits_mboxrd_and_unquotes_one_level() {
        let mbox = b"From a@b Thu Jan  1 00:00:00 1970\nSubject: 1\n\n>From here\n>>From there\n\nFrom c@d Fri Jan  2 00:00:00 1970\nSubject: 2\n\nbody\n";
        assert_eq!(
            split(mbox),
            vec![
                b"Subject: 1\n\nFrom here\n>From there\n".to_vec(),
                b"Subject: 2\n\nbody\n".to_vec()
            ]
        );
    }

    #[test]
    fn unquoted_body_from_lines_do_not_split() {
        let mbox = b"\xEF\xBB\xBFFrom -\nSubject: a\n\nFrom Russia with love\n\nFrom Russia with love\nYear: 1963\n\nFrom -\nSubject: b\n\nx\n";
        let msgs = split(mbox);
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[0].ends_with(b"Year: 1963\n"));
    }

    #[test]
    fn content_length_protects_postmark_like_body_lines() {
        let body = b"From x@y Mon Jan  1 00:00:00 2001\nSubject: fake\n";
        let mut mbox = format!("From a@b {D1}\nContent-Length: {}\n\n", body.len()).into_bytes();
        mbox.extend_from_slice(body);
        mbox.extend_from_slice(format!("\nFrom c@d {D2}\nSubject: 2\n\nz\n").as_bytes());
        let msgs = split(&mbox);
        assert_eq!(msgs.len(), 2);
        assert!(msgs[0].ends_with(b"Subject: fake\n"));
    }

    #[test]
    fn a_lying_content_length_does_not_merge_messages() {
        let mbox = format!(
            "From a {D1}\nContent-Length: 5000\n\nshort\n\nFrom b {D2}\nA: c\n\ny\n\nFrom c {D3}\nA: d\n\nz\n"
        );
        let msgs = split(mbox.as_bytes());
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert_eq!(msgs[0], b"Content-Length: 5000\n\nshort\n");
        assert_eq!(msgs[2], b"A: d\n\nz\n");
    }

    #[test]
    fn a_postmark_after_a_blank_line_starts_a_message_whatever_follows() {
        let msgs =
            split(format!("From a {D1}\nA: b\n\nx\n\nFrom b {D2}\nno header at all\n").as_bytes());
        assert_eq!(
            msgs,
            vec![b"A: b\n\nx\n".to_vec(), b"no header at all\n".to_vec()]
        );
    }

    #[test]
    fn crlf_separator_blank_line_is_dropped_and_garbage_before_first_is_skipped() {
        let mbox =
            format!("junk\r\n\r\nFrom a {D1}\r\nA: b\r\n\r\nx\r\n\r\nFrom b {D2}\r\nA: c\r\n");
        let mut r = MboxReader::new(mbox.as_bytes(), true);
        assert_eq!(
            r.next_message().unwrap().unwrap().bytes,
            b"A: b\r\n\r\nx\r\n"
        );
        let second = r.next_message().unwrap().unwrap();
        assert_eq!(
            (second.index, second.offset, second.bytes.as_slice()),
            (1, mbox.find("From b").unwrap() as u64, &b"A: c\r\n"[..])
        );
        assert!(r.next_message().unwrap().is_none());
        assert_eq!(r.skipped_bytes, 6);
    }

    #[test]
    fn a_message_starting_with_a_quoted_from_line_is_split_off() {
        let mbox = format!(
            "From a {D1}\nA: b\n\nx\n\nFrom b {D2}\n>From b Wed May 16 00:40:34 2001\nA: c\n\ny\n"
        );
        let msgs = split(mbox.as_bytes());
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[1].starts_with(b"From b Wed"));
    }

    #[test]
    fn prose_starting_with_from_is_no_postmark() {
        for line in [
            "From what I heard, 3 people came.",
            "From 9 to 5 every day",
            "From Russia with love",
            "From 2019 on, we met at 10 am.",
            "From here on we meet at 10:30 in 2024.",
            "From now on, 12:00 in 2024 is lunch.",
            "From  ",
        ] {
            assert_eq!(postmark(line.as_bytes()), None, "{line}");
        }
        for (line, kind) in [
            (
                "From MAILER-DAEMON Fri Jul  8 12:08:34 2011",
                Postmark::Dated,
            ),
            ("From nobody Mon Sep 17 00:00:00 2001", Postmark::Dated),
            ("From a@b Wed Feb  9 22:02 MET 2000", Postmark::Dated),
            ("From a@b Sat, 27 Aug 2005 23:07:49 +0200", Postmark::Dated),
            ("From - \n", Postmark::Bare),
            ("From \r\n", Postmark::Bare),
            ("From 1844347792267117879@xxx", Postmark::Bare),
        ] {
            assert_eq!(postmark(line.as_bytes()), Some(kind), "{line}");
        }
        let mbox = format!(
            "From a {D1}\nA: b\n\nhello\n\nFrom what I heard, 3 people came.\nA: c\n\nFrom Russia\nwith love\n"
        );
        assert_eq!(split(mbox.as_bytes()).len(), 1);
    }

    #[test]
    fn a_writer_relying_on_content_length_keeps_its_quoted_from_lines() {
        // As mutt writes: Content-Length, and body lines left as they were.
        let body = "From Mon Jan  1 10:00:00 2024 a line\n>From quoted already\n";
        let mbox = format!(
            "From a@b {D1}\nContent-Length: {}\n\n{body}\nFrom c@d {D2}\nA: b\n\n>From x\n",
            body.len()
        );
        let msgs = split(mbox.as_bytes());
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs[0].ends_with(body.as_bytes()),
            "{:?}",
            String::from_utf8_lossy(&msgs[0])
        );
        // Without Content-Length, mboxrd as before.
        assert_eq!(msgs[1], b"A: b\n\nFrom x\n");
    }

    #[test]
    fn a_split_without_a_blank_line_is_reported_as_doubtful() {
        let mbox =
            format!("From a {D1}\nA: b\n\nx\nFrom b {D2}\nA: c\n\ny\n\nFrom c {D3}\nA: d\n\nz\n");
        let mut r = MboxReader::new(mbox.as_bytes(), true);
        let mut n = 0;
        while r.next_message().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
        let second = mbox.find("From b").unwrap() as u64;
        assert_eq!(r.doubtful_splits, vec![second]);
    }

    #[test]
    fn an_empty_file_or_one_without_postmarks_has_no_messages() {
        assert!(split(b"").is_empty());
        assert!(split(b"hello\nworld\n").is_empty());
    }
}
