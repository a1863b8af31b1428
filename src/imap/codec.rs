//! Sans-IO IMAP responses: what the client reads, out of the bytes received so far.
//!
//! Nothing here touches a socket. [`ResponseDecoder`] takes bytes as they come and yields one
//! response (its lines, its literals) once it is whole; [`Completion`] takes responses until
//! the tagged one that ends a command. Both are bounded: a line longer than [`MAX_LINE`], a
//! literal over [`MAX_LITERAL`], a response of more than [`MAX_LITERALS`] literals or a
//! command's answer over its limit ([`MAX_FETCH_ANSWER`], [`MAX_ANSWER`], counting what each
//! response costs to hold, not only its bytes) is an error, and a literal's memory grows only
//! as its bytes arrive, whatever size the server claims.
//! The client (`super::Client`) feeds them from its stream; the fuzzer and the tests feed
//! them from byte strings, split anywhere.

use std::collections::HashSet;

use base64::Engine as _;

use super::ImapError;

/// The longest response line (without its CRLF and literals) and literal this client accepts.
pub(crate) const MAX_LINE: usize = 64 * 1024;
pub(crate) const MAX_LITERAL: u64 = 256 << 20;
/// The most literals in one response (a FETCH of one message has one to three).
pub(crate) const MAX_LITERALS: usize = 10_000;
/// The most bytes of untagged responses kept for a FETCH (headers of a very large folder fit
/// many times over), and for any other command (capabilities, folders, notices).
pub(crate) const MAX_FETCH_ANSWER: usize = 1 << 30;
pub(crate) const MAX_ANSWER: usize = 64 << 20;
/// What holding a response or a literal costs besides its bytes (its headers on the heap): a
/// flood of tiny responses is bounded by memory, not by bytes.
const HELD_OVERHEAD: usize = 64;

/// One server response: its text with each literal replaced by `{n}`, and the literals.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) text: String,
    pub(crate) literals: Vec<Vec<u8>>,
}

/// Reads one response out of bytes given in any pieces.
#[derive(Debug, Default)]
pub(crate) struct ResponseDecoder {
    response: Response,
    /// The line read so far, without its line feed.
    line: Vec<u8>,
    /// Bytes of the current literal (the last of `response.literals`) still to come.
    literal_left: Option<usize>,
}

/// The length a response line announces as a literal (`{n}`, or `{n+}`), if any. Status lines
/// (`TAG OK|NO|BAD ...`, `* OK|NO|BAD|BYE|PREAUTH ...`) and continuation requests carry text,
/// never a literal: a refusal ending in `{5}` is a refusal.
fn literal_length(first_line: bool, text: &str) -> Option<u64> {
    let digits = text.strip_suffix('}')?.rsplit_once('{')?.1;
    let digits = digits.strip_suffix('+').unwrap_or(digits);
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if first_line {
        let mut words = text.split(' ');
        let first = words.next().unwrap_or("");
        let second = words.next().unwrap_or("").to_ascii_uppercase();
        if first == "+" || matches!(second.as_str(), "OK" | "NO" | "BAD" | "BYE" | "PREAUTH") {
            return None;
        }
    }
    digits.parse().ok()
}

impl Response {
    /// What holding this response costs, about.
    fn held(&self) -> usize {
        self.text.len()
            + self.literals.iter().map(Vec::len).sum::<usize>()
            + HELD_OVERHEAD * (1 + self.literals.len())
    }
}

impl ResponseDecoder {
    /// Takes bytes from `input`: how many it used, and the response once it is whole. Every
    /// byte is used unless a response ends before the end of `input`; the rest belongs to the
    /// next response.
    pub(crate) fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Response>), ImapError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            if let Some(left) = self.literal_left {
                let take = left.min(rest.len());
                let literal = self
                    .response
                    .literals
                    .last_mut()
                    .expect("a literal is open");
                literal.extend_from_slice(&rest[..take]);
                used += take;
                if take < left {
                    self.literal_left = Some(left - take);
                    return Ok((used, None));
                }
                self.literal_left = None;
                continue;
            }
            // A line may hold MAX_LINE bytes before its CRLF.
            let room = MAX_LINE + 2 - self.line.len();
            let window = &rest[..rest.len().min(room)];
            let Some(end) = window.iter().position(|&b| b == b'\n') else {
                if window.len() == room {
                    return Err(ImapError::Protocol(format!(
                        "a response line longer than {MAX_LINE} bytes"
                    )));
                }
                self.line.extend_from_slice(window);
                return Ok((used + window.len(), None));
            };
            self.line.extend_from_slice(&window[..end]);
            used += end + 1;
            let mut line = std::mem::take(&mut self.line);
            if line.ends_with(b"\r") {
                line.pop();
            }
            if line.len() > MAX_LINE {
                return Err(ImapError::Protocol(format!(
                    "a response line longer than {MAX_LINE} bytes"
                )));
            }
            let text = String::from_utf8_lossy(&line);
            let literal = literal_length(self.response.text.is_empty(), &text);
            self.response.text.push_str(&text);
            match literal {
                None => return Ok((used, Some(std::mem::take(&mut self.response)))),
                Some(len) if len > MAX_LITERAL => {
                    return Err(ImapError::Protocol(format!("a literal of {len} bytes")));
                }
                Some(_) if self.response.literals.len() >= MAX_LITERALS => {
                    return Err(ImapError::Protocol(format!(
                        "a response of more than {MAX_LITERALS} literals"
                    )));
                }
                Some(len) => {
                    self.response.literals.push(Vec::new());
                    self.literal_left = Some(len as usize);
                }
            }
        }
    }
}

/// The answer to one command: untagged responses until the one tagged with its tag.
pub(crate) struct Completion<'t> {
    tag: &'t str,
    command: &'static str,
    untagged: Vec<Response>,
    held: usize,
    limit: usize,
}

impl<'t> Completion<'t> {
    pub(crate) fn new(tag: &'t str, command: &'static str) -> Completion<'t> {
        Completion {
            tag,
            command,
            untagged: Vec::new(),
            held: 0,
            limit: match command {
                "FETCH" => MAX_FETCH_ANSWER,
                _ => MAX_ANSWER,
            },
        }
    }

    /// Takes the next response: the untagged ones before it once the tagged OK came, an error
    /// for a tagged NO or BAD, a BYE or an answer beyond the memory bound.
    pub(crate) fn push(&mut self, r: Response) -> Result<Option<Vec<Response>>, ImapError> {
        self.held += r.held();
        if self.held > self.limit {
            return Err(ImapError::Protocol(format!(
                "the answer to {} is larger than {} MiB",
                self.command,
                self.limit >> 20
            )));
        }
        if let Some(rest) = r
            .text
            .strip_prefix(self.tag)
            .and_then(|t| t.strip_prefix(' '))
        {
            if rest.starts_with("OK") {
                return Ok(Some(std::mem::take(&mut self.untagged)));
            }
            return Err(ImapError::Rejected {
                command: self.command,
                reply: rest.to_string(),
            });
        }
        if r.text.starts_with("* BYE") {
            return Err(ImapError::Rejected {
                command: self.command,
                reply: r.text,
            });
        }
        self.untagged.push(r);
        Ok(None)
    }
}

/// The last `* N EXISTS` among `untagged`.
pub(crate) fn exists(untagged: &[Response]) -> Option<u64> {
    untagged
        .iter()
        .filter_map(|r| {
            r.text
                .strip_prefix("* ")?
                .strip_suffix(" EXISTS")?
                .parse()
                .ok()
        })
        .next_back()
}

pub(crate) fn capabilities(untagged: &[Response]) -> HashSet<String> {
    untagged
        .iter()
        .filter_map(|r| r.text.strip_prefix("* CAPABILITY "))
        .flat_map(|caps| caps.split(' ').map(|c| c.to_ascii_uppercase()))
        .collect()
}

/// An IMAP quoted string; CR, LF and NUL cannot be quoted and are refused.
pub(crate) fn quote(s: &str) -> Result<String, ImapError> {
    if s.contains(['\r', '\n', '\0']) {
        return Err(ImapError::Unsupported(
            "a user name or password with a line break or NUL cannot be sent to an IMAP server"
                .into(),
        ));
    }
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// A mailbox name as IMAP wants it: modified UTF-7 (RFC 3501 §5.1.3), which turns every byte
/// outside printable ASCII (CR, LF, non-ASCII) into base64, then quoted. No name can inject.
pub(crate) fn mailbox_name(folder: &str) -> Result<String, ImapError> {
    quote(&modified_utf7(folder))
}

pub(crate) fn modified_utf7(s: &str) -> String {
    const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::IMAP_MUTF7,
        base64::engine::general_purpose::NO_PAD,
    );
    let mut out = String::new();
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if !pending.is_empty() {
            let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
            out.push('&');
            out.push_str(&B64.encode(bytes));
            out.push('-');
            pending.clear();
        }
    };
    for c in s.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// At most 200 characters of a server's line, for an error message.
pub(crate) fn fit_reply(text: &str) -> String {
    text.chars().take(200).collect()
}

/// Every whole response of `bytes`, fed to a decoder in pieces of `piece` bytes, and the
/// error that stopped it.
fn decode_in_pieces(bytes: &[u8], piece: usize) -> (Vec<Response>, Option<ImapError>) {
    let mut decoder = ResponseDecoder::default();
    let mut out = Vec::new();
    for mut chunk in bytes.chunks(piece.max(1)) {
        while !chunk.is_empty() {
            match decoder.decode(chunk) {
                Ok((used, response)) => {
                    chunk = &chunk[used..];
                    out.extend(response);
                }
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

/// For the fuzzer: the responses of `input` are the same whether it comes at once or in pieces
/// of `piece` bytes (a decoder that kept state wrongly across reads would differ).
#[doc(hidden)]
pub fn assert_split_alike(input: &[u8], piece: usize) {
    let (whole, whole_error) = decode_in_pieces(input, input.len());
    let (split, split_error) = decode_in_pieces(input, piece);
    assert_eq!(whole, split, "pieces of {piece}");
    assert_eq!(
        whole_error.is_some(),
        split_error.is_some(),
        "pieces of {piece}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &[u8] = b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n\
        * 1 FETCH (RFC822.SIZE 12 BODY[HEADER] {12}\r\nSubject: x\r\n)\r\n\
        * 2 FETCH (BODY[HEADER] {0}\r\n BODY[TEXT] {3}\r\n\n}\n)\r\n\
        * 3 EXISTS\n\
        p1 OK done\r\n";

    #[test]
    fn responses_are_the_same_however_the_bytes_are_split() {
        let whole = decode_in_pieces(SESSION, SESSION.len()).0;
        let texts: Vec<&str> = whole.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "* OK [CAPABILITY IMAP4rev1 LITERAL+] ready",
                "* 1 FETCH (RFC822.SIZE 12 BODY[HEADER] {12})",
                "* 2 FETCH (BODY[HEADER] {0} BODY[TEXT] {3})",
                "* 3 EXISTS",
                "p1 OK done",
            ]
        );
        assert_eq!(whole[1].literals, [b"Subject: x\r\n".to_vec()]);
        // A literal holds line feeds and braces as bytes, not as the ends of lines.
        assert_eq!(whole[2].literals, [b"".to_vec(), b"\n}\n".to_vec()]);
        for piece in 1..SESSION.len() {
            assert_split_alike(SESSION, piece);
        }
    }

    #[test]
    fn a_response_ending_inside_the_input_leaves_the_rest_unused() {
        let mut decoder = ResponseDecoder::default();
        let (used, response) = decoder.decode(b"* OK hi\r\n* 1 EXISTS\r\n").unwrap();
        assert_eq!(used, 9);
        assert_eq!(response.unwrap().text, "* OK hi");
    }

    #[test]
    fn lines_and_literals_are_bounded_whatever_the_server_claims() {
        let long = vec![b'a'; MAX_LINE + 2];
        assert!(matches!(
            decode_in_pieces(&long, 4096).1,
            Some(ImapError::Protocol(m)) if m.contains("longer than")
        ));
        let mut over = vec![b'a'; MAX_LINE + 1];
        over.push(b'\n');
        assert!(decode_in_pieces(&over, 999).1.is_some());
        // A line of exactly MAX_LINE bytes before its CRLF is taken.
        let mut fits = vec![b'a'; MAX_LINE];
        fits.push(b'\r');
        fits.push(b'\n');
        assert_eq!(decode_in_pieces(&fits, 1000).0[0].text.len(), MAX_LINE);
        let huge = format!("* 1 FETCH (BODY[] {{{}}}\r\n", MAX_LITERAL + 1);
        assert!(matches!(
            decode_in_pieces(huge.as_bytes(), 7).1,
            Some(ImapError::Protocol(m)) if m.contains("literal")
        ));
        // A claimed literal takes memory only as its bytes come.
        let mut decoder = ResponseDecoder::default();
        let claim = format!("* 1 FETCH (BODY[] {{{MAX_LITERAL}}}\r\nabc");
        let (used, none) = decoder.decode(claim.as_bytes()).unwrap();
        assert_eq!((used, none), (claim.len(), None));
        assert!(decoder.response.literals[0].capacity() < 1 << 20);
    }

    #[test]
    fn only_a_well_formed_literal_outside_status_lines_is_a_literal() {
        for (line, literal) in [
            ("* 1 FETCH (BODY[] {5}", Some(5)),
            ("* 1 FETCH (BODY[] {5+}", Some(5)),
            ("* 1 FETCH (BODY[] {5++}", None),
            ("* 1 FETCH (BODY[] {+5}", None),
            ("* 1 FETCH (BODY[] {}", None),
            ("* 1 FETCH (BODY[] {-5}", None),
            ("p2 NO [AUTHENTICATIONFAILED] bad token {5}", None),
            ("p2 ok done {5}", None),
            ("* BYE closing {5}", None),
            ("* OK [ALERT] {5}", None),
            ("+ go ahead {5}", None),
        ] {
            assert_eq!(literal_length(true, line), literal, "{line}");
        }
        // A later line of a response is not a status line, whatever it starts with.
        assert_eq!(literal_length(false, " NO {5}"), Some(5));
        // So a refusal ending like a literal comes back as the refusal.
        let (responses, error) = decode_in_pieces(b"p2 NO bad token {5}\r\n", 3);
        assert!(error.is_none());
        assert_eq!(responses[0].text, "p2 NO bad token {5}");
    }

    #[test]
    fn many_literals_or_many_small_responses_are_bounded_by_what_they_cost() {
        let mut flood = b"* 1 FETCH (X".to_vec();
        for _ in 0..=MAX_LITERALS {
            flood.extend_from_slice(b" {0}\r\n");
        }
        assert!(matches!(
            decode_in_pieces(&flood, 4096).1,
            Some(ImapError::Protocol(m)) if m.contains("literals")
        ));
        // Tiny untagged responses before the tagged end: counted with what each costs.
        let mut c = Completion::new("p1", "CAPABILITY");
        let tiny = Response {
            text: "* A".into(),
            literals: Vec::new(),
        };
        let n = MAX_ANSWER / (3 + HELD_OVERHEAD) + 1;
        let refused = (0..n).find_map(|_| c.push(tiny.clone()).err());
        assert!(
            matches!(refused, Some(ImapError::Protocol(m)) if m.contains("CAPABILITY")),
            "bounded at about {} MiB",
            MAX_ANSWER >> 20
        );
    }

    #[test]
    fn a_command_completes_on_its_tag_and_fails_on_no_bad_or_bye() {
        let r = |text: &str| Response {
            text: text.into(),
            literals: Vec::new(),
        };
        let mut c = Completion::new("p7", "LIST");
        assert!(c.push(r("* LIST () \"/\" INBOX")).unwrap().is_none());
        // Another command's tag, or one that only starts like ours, is not the end.
        assert!(c.push(r("p77 OK other")).unwrap().is_none());
        let untagged = c.push(r("p7 OK LIST done")).unwrap().unwrap();
        assert_eq!(untagged.len(), 2);
        for end in ["p7 NO [OVERQUOTA] full", "p7 BAD what", "* BYE going away"] {
            let mut c = Completion::new("p7", "APPEND");
            assert!(
                matches!(
                    c.push(r(end)),
                    Err(ImapError::Rejected {
                        command: "APPEND",
                        ..
                    })
                ),
                "{end}"
            );
        }
    }

    #[test]
    fn folder_names_cannot_inject_commands() {
        assert_eq!(mailbox_name("Inbox").unwrap(), "\"Inbox\"");
        assert_eq!(mailbox_name("a\"b\\c").unwrap(), "\"a\\\"b\\\\c\"");
        assert_eq!(mailbox_name("Entwürfe").unwrap(), "\"Entw&APw-rfe\"");
        assert_eq!(
            mailbox_name("x\r\nA1 DELETE INBOX").unwrap(),
            "\"x&AA0ACg-A1 DELETE INBOX\""
        );
        assert_eq!(mailbox_name("R&D").unwrap(), "\"R&-D\"");
    }
}
