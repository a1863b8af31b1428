//! Splitting an mbox file into messages, reading mboxrd, mboxo, `From - ` (Thunderbird) and
//! Content-Length (mboxcl) variants.
//!
//! Rules (doc/FORMAT.md repeats them for users):
//! - A message starts at a `From ` line that looks like a postmark: `From SENDER` followed by nothing
//!   or by text with a digit in it (a date); the first postmark of the file may follow a UTF-8 BOM
//!   and blank lines; a later one must follow a blank line or be followed by a header-like line
//!   (`Name:`), a quoted `>From ` line or a blank line, so an unquoted body line such as
//!   `From Russia with love` does not split a message.
//! - Inside a message whose `Content-Length` header is present, no split happens before that many
//!   body bytes have been read (mboxcl: unquoted `From ` lines in bodies), unless the length turns
//!   out wrong (no message starts where it ends): then the first postmark it hid is used.
//! - The `From ` line and the one blank line before the next `From ` line (or EOF) are not part of
//!   the message. Every line that matches `>+From ` loses one `>` (mboxrd unquoting), unless `raw`.
//!
//! Memory: one message at a time.

use std::collections::VecDeque;
use std::io::{self, BufRead};

/// One message split out of an mbox file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MboxMessage {
    /// 0-based position in the file.
    pub index: u64,
    /// Byte offset of its `From ` line.
    pub offset: u64,
    /// The `From ` line without its line ending (envelope sender and date).
    pub from_line: String,
    pub bytes: Vec<u8>,
}

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
}

impl<R: BufRead> MboxReader<R> {
    pub fn new(input: R, unquote: bool) -> Self {
        MboxReader {
            input,
            pending: VecDeque::new(),
            offset: 0,
            index: 0,
            unquote,
            started: false,
            skipped_bytes: 0,
        }
    }

    fn read_line(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        if let Some(line) = self.pending.pop_front() {
            return Ok(Some(line));
        }
        let mut line = Vec::new();
        let n = self.input.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
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

    /// Whether `line` (just read, not the first of the file) starts a new message: a postmark
    /// after a blank line, or one followed by what starts a message.
    fn is_separator(&mut self, line: &[u8], after_blank: bool) -> io::Result<bool> {
        if !is_postmark(line) {
            return Ok(false);
        }
        if after_blank {
            return Ok(true);
        }
        Ok(match self.peek_line()? {
            None => false,
            // A message may itself start with a quoted `From ` line (a copied postmark).
            Some(next) => is_blank(next) || is_header_like(next) || is_quoted_from(next),
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
                if is_postmark(&line) {
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
        while let Some((at, line)) = self.read_line()? {
            let inside_by_length = !in_headers && content_length.is_some_and(|cl| body_len < cl);
            let postmark = line.starts_with(b"From ") && self.is_separator(&line, prev_blank)?;
            if postmark && !inside_by_length {
                held = None; // Content-Length (if any) was right: what it hid were body lines
                self.pending.push_front((at, line));
                break;
            }
            if !inside_by_length && held.is_some() && !is_blank(&line) {
                // Content-Length was reached and no message starts here: the header lied, so
                // the first postmark it hid starts the next message after all.
                let (cut, lines) = held.take().expect("checked");
                bytes.truncate(cut);
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
            if self.unquote && is_quoted_from(&line) {
                bytes.extend_from_slice(&line[1..]);
            } else {
                bytes.extend_from_slice(&line);
            }
        }
        if let Some((cut, lines)) =
            held.filter(|_| !in_headers && content_length.is_some_and(|cl| body_len < cl))
        {
            // The file ended before Content-Length did: the header lied (see above).
            bytes.truncate(cut);
            for l in lines.into_iter().rev() {
                self.pending.push_front(l);
            }
        }
        // The blank line that separates messages belongs to the mbox, not to the message.
        if bytes.ends_with(b"\n\r\n") {
            bytes.truncate(bytes.len() - 2);
        } else if bytes.ends_with(b"\n\n") || bytes == b"\n" {
            bytes.truncate(bytes.len() - 1);
        }
        let from_line = String::from_utf8_lossy(trim_eol(&from_line)).into_owned();
        let index = self.index;
        self.index += 1;
        Ok(Some(MboxMessage {
            index,
            offset,
            from_line,
            bytes,
        }))
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_blank(line: &[u8]) -> bool {
    trim_eol(line).is_empty()
}

/// `From SENDER` alone, or followed by text containing a digit (a date).
pub fn is_postmark(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"From ") else {
        return false;
    };
    let rest = trim_eol(rest);
    let sender_len = rest
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(rest.len());
    if sender_len == 0 && !rest.is_empty() {
        return rest.iter().any(u8::is_ascii_digit);
    }
    let after = &rest[sender_len..];
    after.iter().all(|b| b.is_ascii_whitespace()) || after.iter().any(u8::is_ascii_digit)
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
        let mut mbox = format!("From a@b 1 2\nContent-Length: {}\n\n", body.len()).into_bytes();
        mbox.extend_from_slice(body);
        mbox.extend_from_slice(b"\nFrom c@d 3 4\nSubject: 2\n\nz\n");
        let msgs = split(&mbox);
        assert_eq!(msgs.len(), 2);
        assert!(msgs[0].ends_with(b"Subject: fake\n"));
    }

    #[test]
    fn a_lying_content_length_does_not_merge_messages() {
        let mbox = b"From a 1\nContent-Length: 5000\n\nshort\n\nFrom b 2\nA: c\n\ny\n\nFrom c 3\nA: d\n\nz\n";
        let msgs = split(mbox);
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert_eq!(msgs[0], b"Content-Length: 5000\n\nshort\n");
        assert_eq!(msgs[2], b"A: d\n\nz\n");
    }

    #[test]
    fn a_postmark_after_a_blank_line_starts_a_message_whatever_follows() {
        let msgs = split(b"From a 1\nA: b\n\nx\n\nFrom b 2\nno header at all\n");
        assert_eq!(
            msgs,
            vec![b"A: b\n\nx\n".to_vec(), b"no header at all\n".to_vec()]
        );
    }

    #[test]
    fn crlf_separator_blank_line_is_dropped_and_garbage_before_first_is_skipped() {
        let mut r = MboxReader::new(
            &b"junk\r\n\r\nFrom a 1\r\nA: b\r\n\r\nx\r\n\r\nFrom b 2\r\nA: c\r\n"[..],
            true,
        );
        assert_eq!(
            r.next_message().unwrap().unwrap().bytes,
            b"A: b\r\n\r\nx\r\n"
        );
        let second = r.next_message().unwrap().unwrap();
        assert_eq!(
            (second.index, second.offset, second.bytes.as_slice()),
            (1, 31, &b"A: c\r\n"[..])
        );
        assert!(r.next_message().unwrap().is_none());
        assert_eq!(r.skipped_bytes, 6);
    }

    #[test]
    fn a_message_starting_with_a_quoted_from_line_is_split_off() {
        let mbox =
            b"From a 1\nA: b\n\nx\n\nFrom b 2\n>From b Wed May 16 00:40:34 2001\nA: c\n\ny\n";
        let msgs = split(mbox);
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[1].starts_with(b"From b Wed"));
    }

    #[test]
    fn an_empty_file_or_one_without_postmarks_has_no_messages() {
        assert!(split(b"").is_empty());
        assert!(split(b"hello\nworld\n").is_empty());
    }
}
