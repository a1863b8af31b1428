//! Sans-IO POP3 codec: commands to bytes, replies and multi-line data out of a byte buffer.
//!
//! Nothing here reads or writes a socket. Every parser takes the bytes received so far and
//! answers either with a value and how many bytes it consumed, or with "need more bytes"
//! (`Ok(None)` / [`BodyEvent::NeedMore`]). Status and listing lines are bounded: a server that
//! never sends a line feed there gets [`Pop3Error::LineTooLong`], never an ever-growing buffer.
//! Message bodies have no line limit (real mail has single-line parts of megabytes): they stream
//! through [`BodyDecoder`] without being buffered, and the caller bounds a message's total size.

use std::fmt;
use std::ops::Range;

use super::{Pop3Error, Result, Secret};

/// Longest status, continuation or listing line accepted, terminator included. RFC 2449 §4
/// caps responses at 512 octets; real servers exceed it (long CAPA SASL lines, XOAUTH2 error
/// challenges), so we allow more, but still far less than a message line.
pub const STATUS_LINE_LIMIT: usize = 8 * 1024;

/// A command the client sends. Arguments are borrowed; `encode` refuses any argument holding a
/// CR, LF or NUL, so no argument can smuggle a second command onto the wire.
#[derive(Debug, Clone, Copy)]
pub enum Command<'a> {
    /// USER (RFC 1939 §7)
    User(&'a str),
    /// PASS (RFC 1939 §7)
    Pass(&'a Secret),
    /// APOP (RFC 1939 §7): `digest` is the lowercase hex MD5 from [`super::auth::apop_digest`]
    Apop { user: &'a str, digest: &'a str },
    /// STAT (RFC 1939 §5)
    Stat,
    /// LIST (RFC 1939 §5), with or without a message number
    List(Option<u32>),
    /// UIDL (RFC 1939 §7), with or without a message number
    Uidl(Option<u32>),
    /// RETR (RFC 1939 §5)
    Retr(u32),
    /// TOP (RFC 1939 §7)
    Top { msgno: u32, lines: u32 },
    /// DELE (RFC 1939 §5)
    Dele(u32),
    /// NOOP (RFC 1939 §5)
    Noop,
    /// RSET (RFC 1939 §5)
    Rset,
    /// QUIT (RFC 1939 §4 and §6)
    Quit,
    /// CAPA (RFC 2449 §5)
    Capa,
    /// STLS (RFC 2595 §4)
    Stls,
    /// AUTH (RFC 5034 §4), with an optional base64 initial response (`=` when empty)
    Auth {
        mechanism: &'a str,
        initial_response: Option<&'a str>,
    },
    /// A line answering an AUTH challenge (RFC 5034 §4): base64, empty, or `*` to cancel
    AuthResponse(&'a str),
}

impl Command<'_> {
    /// The verb alone: what errors and logs may show. Never the arguments, which may be secret.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Apop { .. } => "APOP",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Uidl(_) => "UIDL",
            Command::Retr(_) => "RETR",
            Command::Top { .. } => "TOP",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Quit => "QUIT",
            Command::Capa => "CAPA",
            Command::Stls => "STLS",
            Command::Auth { .. } | Command::AuthResponse(_) => "AUTH",
        }
    }

    /// Appends the command line, CRLF included, to `out`. On error nothing is appended.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let line = match self {
            Command::User(user) => format!("USER {}", arg("user name", user)?),
            Command::Pass(secret) => format!("PASS {}", arg("password", secret.expose())?),
            Command::Apop { user, digest } => {
                format!(
                    "APOP {} {}",
                    arg("user name", user)?,
                    arg("digest", digest)?
                )
            }
            Command::List(Some(n)) => format!("LIST {n}"),
            Command::Uidl(Some(n)) => format!("UIDL {n}"),
            Command::Retr(n) => format!("RETR {n}"),
            Command::Top { msgno, lines } => format!("TOP {msgno} {lines}"),
            Command::Dele(n) => format!("DELE {n}"),
            Command::Auth {
                mechanism,
                initial_response,
            } => match initial_response {
                // RFC 5034 §4: an empty initial response is sent as a single "=".
                Some("") => format!("AUTH {} =", arg("mechanism", mechanism)?),
                Some(ir) => format!(
                    "AUTH {} {}",
                    arg("mechanism", mechanism)?,
                    arg("initial response", ir)?
                ),
                None => format!("AUTH {}", arg("mechanism", mechanism)?),
            },
            Command::AuthResponse(line) => arg("authentication response", line)?.to_owned(),
            other => other.verb().to_owned(),
        };
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
        Ok(())
    }
}

/// Checks that an argument cannot break the line it is put on. The message names the argument,
/// never its value, since it may be a secret.
fn arg<'s>(what: &str, value: &'s str) -> Result<&'s str> {
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(Pop3Error::InvalidArgument {
            what: format!("{what} contains a line break or NUL"),
        });
    }
    Ok(value)
}

/// The status indicator of a reply line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `+OK`
    Ok,
    /// `-ERR`
    Err,
    /// `+ ` followed by a base64 challenge, only during AUTH (RFC 5034 §4)
    Continue,
}

/// An extended response code (RFC 2449 §8, RFC 3206), e.g. `[IN-USE]` or `[SYS/TEMP]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespCode {
    /// `[IN-USE]`: the maildrop is locked by another session (RFC 2449 §8.1.1)
    InUse,
    /// `[LOGIN-DELAY]`: logging in again too soon (RFC 2449 §8.1.2)
    LoginDelay,
    /// `[SYS/TEMP]`: a temporary server failure, worth retrying (RFC 3206 §4)
    SysTemp,
    /// `[SYS/PERM]`: a permanent server failure (RFC 3206 §4)
    SysPerm,
    /// `[AUTH]`: the credentials were wrong (RFC 3206 §5)
    Auth,
    /// Any other code, as sent
    Other(String),
}

impl RespCode {
    fn parse(code: &str) -> RespCode {
        match code.to_ascii_uppercase().as_str() {
            "IN-USE" => RespCode::InUse,
            "LOGIN-DELAY" => RespCode::LoginDelay,
            "SYS/TEMP" => RespCode::SysTemp,
            "SYS/PERM" => RespCode::SysPerm,
            "AUTH" => RespCode::Auth,
            _ => RespCode::Other(code.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            RespCode::InUse => "IN-USE",
            RespCode::LoginDelay => "LOGIN-DELAY",
            RespCode::SysTemp => "SYS/TEMP",
            RespCode::SysPerm => "SYS/PERM",
            RespCode::Auth => "AUTH",
            RespCode::Other(s) => s,
        }
    }
}

/// One status line: `+OK`, `-ERR` or an AUTH continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: Status,
    pub code: Option<RespCode>,
    /// The text after the indicator and the response code, as UTF-8 (lossy)
    pub text: String,
    /// The line ended in a bare LF: the server does not use CRLF, so a multi-line body that
    /// follows is decoded in LF mode (see [`BodyDecoder::new`])
    pub bare_lf: bool,
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.status {
            Status::Ok => "+OK",
            Status::Err => "-ERR",
            Status::Continue => "+",
        })?;
        if let Some(code) = &self.code {
            write!(f, " [{}]", code.as_str())?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// Finds the next line in `buf`. Returns the line without its terminator (CRLF or a bare LF)
/// and the bytes consumed, `Ok(None)` when no complete line is there yet, or
/// [`Pop3Error::LineTooLong`] when `limit` bytes arrived without a line feed.
pub fn next_line(buf: &[u8], limit: usize) -> Result<Option<(&[u8], usize)>> {
    let window = &buf[..buf.len().min(limit)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let line = &buf[..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Ok(Some((line, i + 1)))
        }
        None if buf.len() >= limit => Err(Pop3Error::LineTooLong { limit }),
        None => Ok(None),
    }
}

/// Parses one status line (RFC 1939 §3, RFC 2449 §8, RFC 5034 §4) from the start of `buf`.
/// Returns the reply and the bytes consumed, or `Ok(None)` when the line is incomplete.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>> {
    let Some((line, used)) = next_line(buf, STATUS_LINE_LIMIT)? else {
        return Ok(None);
    };
    let bare_lf = !buf[..used].ends_with(b"\r\n");
    let (status, rest) = if let Some(rest) = strip_indicator(line, b"+OK") {
        (Status::Ok, rest)
    } else if let Some(rest) = strip_indicator(line, b"-ERR") {
        (Status::Err, rest)
    } else if let Some(rest) = strip_indicator(line, b"+") {
        (Status::Continue, rest)
    } else {
        return Err(Pop3Error::protocol(format!(
            "malformed status line {:?}",
            printable(line)
        )));
    };
    let rest = String::from_utf8_lossy(rest);
    let rest = rest.trim_start_matches([' ', '\t']);
    let (code, text) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
        // Response codes are only meaningful on +OK/-ERR; a continuation is opaque base64.
        Some((code, text)) if status != Status::Continue && is_resp_code(code) => {
            (Some(RespCode::parse(code)), text.trim_start())
        }
        _ => (None, rest),
    };
    let reply = Reply {
        status,
        code,
        text: text.trim_end().to_owned(),
        bare_lf,
    };
    Ok(Some((reply, used)))
}

/// `+OK` must be followed by the end of the line or whitespace: `+OKAY` is not a status.
fn strip_indicator<'l>(line: &'l [u8], indicator: &[u8]) -> Option<&'l [u8]> {
    if line.len() < indicator.len() || !line[..indicator.len()].eq_ignore_ascii_case(indicator) {
        return None;
    }
    let rest = &line[indicator.len()..];
    match rest.first() {
        None | Some(b' ' | b'\t') => Some(rest),
        Some(_) => None,
    }
}

/// RFC 2449 §8: resp-code = resp-level *("/" resp-level), resp-level = 1*schar.
fn is_resp_code(code: &str) -> bool {
    !code.is_empty()
        && code.split('/').all(|level| {
            !level.is_empty()
                && level
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'[' && b != b']' && b != b'/')
        })
}

/// Shows server bytes in an error message: lossy UTF-8, cut to 80 characters.
pub(crate) fn printable(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    s.chars().take(80).collect()
}

/// A line of a multi-line listing (CAPA, LIST, UIDL), already split by [`next_line`]:
/// `None` for the terminating ".", otherwise the line with one leading dot removed
/// (dot-stuffing, RFC 1939 §3).
pub fn listing_item(line: &[u8]) -> Option<&[u8]> {
    match line {
        b"." => None,
        [b'.', rest @ ..] => Some(rest),
        _ => Some(line),
    }
}

/// What [`BodyDecoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEvent {
    /// Message bytes, already unstuffed: this range of the input given to `decode`
    Data(Range<usize>),
    /// The terminating `.` line was consumed; the body is complete
    End,
    /// Nothing more can be decided without more bytes
    NeedMore,
}

/// Streams the body of a multi-line reply (RFC 1939 §3), e.g. RETR: removes dot-stuffing and
/// finds the terminating `CRLF.CRLF`, whatever the chunk boundaries.
///
/// Output is always a sub-range of the input, so no byte is copied here and the caller's
/// buffer bounds memory whatever the line lengths. Invariant: bytes consumed are never
/// revisited, so state that spans chunks (at a line start? previous byte a CR?) lives in the
/// decoder.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    /// LF-only server: any LF ends a line. Otherwise only CRLF does, and a bare LF inside a
    /// line is message data (a "." after it is not stuffing).
    bare_lf: bool,
    at_line_start: bool,
    prev_cr: bool,
    done: bool,
}

impl BodyDecoder {
    /// A decoder for the body that follows a `+OK` line; `bare_lf` is [`Reply::bare_lf`] of that
    /// line, so a server that ends lines in LF only is still understood.
    pub fn new(bare_lf: bool) -> Self {
        BodyDecoder {
            bare_lf,
            at_line_start: true,
            prev_cr: false,
            done: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Decodes from the start of `input` (the bytes not consumed by earlier calls). Returns how
    /// many bytes were consumed and what was found. `NeedMore` may come with a non-zero count
    /// (a stuffing dot was dropped); the caller advances by it either way.
    pub fn decode(&mut self, input: &[u8]) -> (usize, BodyEvent) {
        if self.done {
            return (0, BodyEvent::End);
        }
        let mut pos = 0;
        if self.at_line_start {
            match input {
                [] | [b'.'] | [b'.', b'\r'] => return (0, BodyEvent::NeedMore),
                [b'.', b'\r', b'\n', ..] => return (3, self.finish()),
                [b'.', b'\n', ..] if self.bare_lf => return (2, self.finish()),
                // Any other line starting with "." was stuffed: drop the first dot.
                [b'.', ..] => pos = 1,
                _ => {}
            }
            self.at_line_start = false;
            self.prev_cr = false;
        }
        let rest = &input[pos..];
        if rest.is_empty() {
            return (pos, BodyEvent::NeedMore);
        }
        let (end, line_end) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let crlf = if i == 0 {
                    self.prev_cr
                } else {
                    rest[i - 1] == b'\r'
                };
                (pos + i + 1, Some(crlf || self.bare_lf))
            }
            None => (input.len(), None),
        };
        match line_end {
            Some(starts_line) => {
                self.at_line_start = starts_line;
                self.prev_cr = false;
            }
            None => self.prev_cr = input[end - 1] == b'\r',
        }
        (end, BodyEvent::Data(pos..end))
    }

    fn finish(&mut self) -> BodyEvent {
        self.done = true;
        BodyEvent::End
    }
}

/// The server's retention policy for retrieved messages (RFC 2449 §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expire {
    /// `EXPIRE NEVER`: the server never deletes on its own
    Never,
    /// `EXPIRE n`: retrieved messages may be deleted after n days (0: at the end of the session
    /// that retrieved them, as if the client had sent DELE)
    Days(u64),
}

/// The capabilities from a CAPA reply (RFC 2449 §5, §6): one tag per line, with arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// (upper-cased tag, arguments as sent), in the server's order
    entries: Vec<(String, Vec<String>)>,
}

impl Capabilities {
    /// Builds the set from the listing lines (already unstuffed, terminator excluded).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let entries = lines
            .into_iter()
            .filter_map(|line| {
                let mut words = line.split_ascii_whitespace();
                let tag = words.next()?.to_ascii_uppercase();
                Some((tag, words.map(str::to_owned).collect()))
            })
            .collect();
        Capabilities { entries }
    }

    pub fn has(&self, tag: &str) -> bool {
        self.args(tag).is_some()
    }

    pub fn args(&self, tag: &str) -> Option<&[String]> {
        self.entries
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(tag))
            .map(|(_, args)| args.as_slice())
    }

    /// SASL mechanisms (RFC 2449 §6.3), upper-cased.
    pub fn sasl_mechanisms(&self) -> Vec<String> {
        self.args("SASL")
            .unwrap_or_default()
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect()
    }

    pub fn has_sasl(&self, mechanism: &str) -> bool {
        self.args("SASL")
            .unwrap_or_default()
            .iter()
            .any(|m| m.eq_ignore_ascii_case(mechanism))
    }

    /// PIPELINING (RFC 2449 §6.6)
    pub fn pipelining(&self) -> bool {
        self.has("PIPELINING")
    }

    /// STLS (RFC 2595 §4)
    pub fn stls(&self) -> bool {
        self.has("STLS")
    }

    /// IMPLEMENTATION (RFC 2449 §6.9)
    pub fn implementation(&self) -> Option<String> {
        self.args("IMPLEMENTATION").map(|a| a.join(" "))
    }

    /// LOGIN-DELAY (RFC 2449 §6.5): the fewest seconds the server allows between two logins.
    /// Before login a trailing `USER` says the value may differ per user (ask again after).
    pub fn login_delay(&self) -> Option<u64> {
        self.args("LOGIN-DELAY")?.first()?.parse().ok()
    }

    /// EXPIRE (RFC 2449 §6.7): how long the server keeps a message once it has been retrieved.
    pub fn expire(&self) -> Option<Expire> {
        let value = self.args("EXPIRE")?.first()?;
        if value.eq_ignore_ascii_case("NEVER") {
            return Some(Expire::Never);
        }
        value.parse().ok().map(Expire::Days)
    }

    /// Every capability line as a tag followed by its arguments, for display.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.entries.iter().map(|(tag, args)| {
            std::iter::once(tag.as_str())
                .chain(args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ")
        })
    }
}

fn parse_number<T: std::str::FromStr>(word: Option<&str>, what: &str, line: &str) -> Result<T> {
    word.and_then(|w| w.parse().ok())
        .ok_or_else(|| Pop3Error::protocol(format!("bad {what} in {line:?}")))
}

/// The text of a STAT reply (RFC 1939 §5): `count size`.
pub fn parse_stat(text: &str) -> Result<(u32, u64)> {
    let mut words = text.split_ascii_whitespace();
    let count = parse_number(words.next(), "message count", text)?;
    let size = parse_number(words.next(), "maildrop size", text)?;
    Ok((count, size))
}

/// One line of a LIST listing, or the text of a single LIST reply (RFC 1939 §5):
/// `msgno size`, ignoring anything after the size as the RFC allows.
pub fn parse_list_line(line: &[u8]) -> Result<(u32, u64)> {
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_ascii_whitespace();
    let msgno = parse_number(words.next(), "message number", &line)?;
    let size = parse_number(words.next(), "message size", &line)?;
    Ok((msgno, size))
}

/// Why a UIDL line could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UidlLineError {
    /// No message number: the listing itself is broken
    Malformed(String),
    /// A valid message number with a unique-id we refuse to use; the message can be skipped
    BadUid { msgno: u32, reason: String },
}

/// The longest unique-id kept: RFC 1939 says 70 characters; real servers stay far below this.
pub const MAX_UNIQUE_ID: usize = 256;

/// One line of a UIDL listing, or the text of a single UIDL reply (RFC 1939 §7):
/// `msgno unique-id`.
///
/// RFC 1939 says a unique-id is 1-70 characters in 0x21-0x7E. We are tolerant where it is
/// harmless (longer ids, UTF-8 beyond ASCII, trailing whitespace) and refuse what would make
/// the id ambiguous as a key: inner spaces, control characters, invalid UTF-8.
pub fn parse_uidl_line(line: &[u8]) -> Result<(u32, String), UidlLineError> {
    let text = String::from_utf8_lossy(line);
    let trimmed = line.trim_ascii();
    let split = trimmed
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(trimmed.len());
    let msgno: u32 = std::str::from_utf8(&trimmed[..split])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| UidlLineError::Malformed(format!("bad UIDL line {:?}", printable(line))))?;
    let uid = trimmed[split..].trim_ascii_start();
    let bad = |reason: String| UidlLineError::BadUid { msgno, reason };
    if uid.is_empty() {
        return Err(bad("empty unique-id".into()));
    }
    if uid.len() > MAX_UNIQUE_ID {
        return Err(bad(format!("unique-id of {} bytes", uid.len())));
    }
    if let Some(&b) = uid.iter().find(|&&b| b < 0x21 || b == 0x7f) {
        return Err(bad(format!(
            "unique-id {:?} contains space or control byte 0x{b:02x}",
            printable(uid)
        )));
    }
    match std::str::from_utf8(uid) {
        Ok(uid) => Ok((msgno, uid.to_owned())),
        Err(_) => Err(bad(format!("unique-id {:?} is not UTF-8", text.trim()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(cmd: Command) -> Vec<u8> {
        let mut out = Vec::new();
        cmd.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn commands_encode_to_crlf_lines() {
        let pw = Secret::new("tanstaaf");
        assert_eq!(encode(Command::User("alice")), b"USER alice\r\n");
        assert_eq!(encode(Command::Pass(&pw)), b"PASS tanstaaf\r\n");
        assert_eq!(
            encode(Command::Apop {
                user: "mrose",
                digest: "c4c9334bac560ecc979e58001b3e22fb"
            }),
            b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n"
        );
        assert_eq!(encode(Command::Stat), b"STAT\r\n");
        assert_eq!(encode(Command::List(None)), b"LIST\r\n");
        assert_eq!(encode(Command::List(Some(2))), b"LIST 2\r\n");
        assert_eq!(encode(Command::Uidl(None)), b"UIDL\r\n");
        assert_eq!(encode(Command::Retr(17)), b"RETR 17\r\n");
        assert_eq!(encode(Command::Top { msgno: 1, lines: 0 }), b"TOP 1 0\r\n");
        assert_eq!(encode(Command::Dele(3)), b"DELE 3\r\n");
        assert_eq!(encode(Command::Noop), b"NOOP\r\n");
        assert_eq!(encode(Command::Rset), b"RSET\r\n");
        assert_eq!(encode(Command::Quit), b"QUIT\r\n");
        assert_eq!(encode(Command::Capa), b"CAPA\r\n");
        assert_eq!(encode(Command::Stls), b"STLS\r\n");
        assert_eq!(
            encode(Command::Auth {
                mechanism: "PLAIN",
                initial_response: Some("AGFsaWNlAHNlY3JldA==")
            }),
            b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"
        );
        assert_eq!(
            encode(Command::Auth {
                mechanism: "X",
                initial_response: Some("")
            }),
            b"AUTH X =\r\n"
        );
        assert_eq!(
            encode(Command::Auth {
                mechanism: "LOGIN",
                initial_response: None
            }),
            b"AUTH LOGIN\r\n"
        );
        assert_eq!(encode(Command::AuthResponse("")), b"\r\n");
        assert_eq!(encode(Command::AuthResponse("*")), b"*\r\n");
    }

    #[test]
    fn injection_through_arguments_is_refused_without_echoing_secrets() {
        let pw = Secret::new("pw\r\nDELE 1");
        let mut out = Vec::new();
        let err = Command::Pass(&pw).encode(&mut out).unwrap_err();
        assert!(out.is_empty());
        assert!(!err.to_string().contains("DELE"), "{err}");
        assert!(Command::User("a\nb").encode(&mut out).is_err());
        assert!(Command::User("a\0b").encode(&mut out).is_err());
        assert_eq!(Command::Pass(&pw).verb(), "PASS");
    }

    fn reply(bytes: &[u8]) -> Reply {
        let (r, used) = parse_reply(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        r
    }

    #[test]
    fn status_lines() {
        let r = reply(b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n");
        assert_eq!(r.status, Status::Ok);
        assert_eq!(r.code, None);
        assert_eq!(
            r.text,
            "POP3 server ready <1896.697170952@dbc.mtview.ca.us>"
        );
        assert!(!r.bare_lf);

        let r = reply(b"-ERR [IN-USE] Do you have another POP session running?\r\n");
        assert_eq!(r.status, Status::Err);
        assert_eq!(r.code, Some(RespCode::InUse));
        assert_eq!(r.text, "Do you have another POP session running?");
        assert_eq!(
            r.to_string(),
            "-ERR [IN-USE] Do you have another POP session running?"
        );

        assert_eq!(
            reply(b"-ERR [SYS/TEMP] later\r\n").code,
            Some(RespCode::SysTemp)
        );
        assert_eq!(
            reply(b"-ERR [SYS/PERM] no\r\n").code,
            Some(RespCode::SysPerm)
        );
        assert_eq!(reply(b"-ERR [AUTH] bad\r\n").code, Some(RespCode::Auth));
        assert_eq!(
            reply(b"-ERR [LOGIN-DELAY] wait\r\n").code,
            Some(RespCode::LoginDelay)
        );
        assert_eq!(
            reply(b"-ERR [X-FOO/BAR] x\r\n").code,
            Some(RespCode::Other("X-FOO/BAR".into()))
        );
        // Not a response code: brackets with spaces, or an empty one.
        assert_eq!(reply(b"-ERR [not a code] x\r\n").code, None);
        assert_eq!(reply(b"-ERR [] x\r\n").code, None);

        let r = reply(b"+OK\r\n");
        assert_eq!((r.status, r.text.as_str()), (Status::Ok, ""));
        let r = reply(b"-ERR\n");
        assert_eq!(r.status, Status::Err);
        assert!(r.bare_lf);

        let r = reply(b"+ VXNlcm5hbWU6\r\n");
        assert_eq!(
            (r.status, r.text.as_str()),
            (Status::Continue, "VXNlcm5hbWU6")
        );
        let r = reply(b"+\r\n");
        assert_eq!((r.status, r.text.as_str()), (Status::Continue, ""));
        assert_eq!(reply(b"+ [abc]\r\n").code, None);
    }

    #[test]
    fn status_line_incomplete_needs_more() {
        let full = b"+OK 2 320\r\n";
        for i in 0..full.len() {
            assert_eq!(parse_reply(&full[..i]).unwrap(), None, "prefix {i}");
        }
    }

    #[test]
    fn status_line_consumes_only_its_line() {
        let (r, used) = parse_reply(b"+OK a\r\n+OK b\r\n").unwrap().unwrap();
        assert_eq!((r.text.as_str(), used), ("a", 7));
    }

    #[test]
    fn malformed_status_lines_are_protocol_errors() {
        for bad in [
            &b"OK\r\n"[..],
            b"+OKAY\r\n",
            b"* OK imap\r\n",
            b"\r\n",
            b"-ERROR x\r\n",
        ] {
            assert!(
                matches!(parse_reply(bad), Err(Pop3Error::Protocol { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn endless_status_line_is_bounded() {
        let mut buf = b"+OK ".to_vec();
        buf.resize(STATUS_LINE_LIMIT - 1, b'x');
        assert_eq!(parse_reply(&buf).unwrap(), None);
        buf.push(b'x');
        assert!(matches!(
            parse_reply(&buf),
            Err(Pop3Error::LineTooLong {
                limit: STATUS_LINE_LIMIT
            })
        ));
        // A line feed past the limit does not rescue it either.
        buf.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse_reply(&buf),
            Err(Pop3Error::LineTooLong { .. })
        ));
    }

    #[test]
    fn listing_items_unstuff() {
        assert_eq!(listing_item(b"."), None);
        assert_eq!(listing_item(b".."), Some(&b"."[..]));
        assert_eq!(listing_item(b"..x"), Some(&b".x"[..]));
        assert_eq!(listing_item(b"1 120"), Some(&b"1 120"[..]));
    }

    /// Feeds `chunks` to a decoder as a socket would deliver them, keeping unconsumed bytes,
    /// and returns the decoded body, the bytes left after the terminator, and whether it ended.
    fn decode_chunks(bare_lf: bool, chunks: &[&[u8]]) -> (Vec<u8>, Vec<u8>, bool) {
        let mut dec = BodyDecoder::new(bare_lf);
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for (k, chunk) in chunks.iter().enumerate() {
            pending.extend_from_slice(chunk);
            loop {
                let (used, ev) = dec.decode(&pending);
                if let BodyEvent::Data(r) = &ev {
                    assert!(r.end <= used && !r.is_empty());
                    out.extend_from_slice(&pending[r.clone()]);
                }
                pending.drain(..used);
                match ev {
                    BodyEvent::Data(_) => {}
                    BodyEvent::End => {
                        pending.extend(chunks[k + 1..].iter().flat_map(|c| c.iter()));
                        return (out, pending, true);
                    }
                    BodyEvent::NeedMore => break,
                }
            }
        }
        (out, pending, dec.is_done())
    }

    /// Every way of cutting `wire` into two or three chunks decodes to the same result.
    fn check_all_splits(bare_lf: bool, wire: &[u8], body: &[u8], rest: &[u8]) {
        let expect = (body.to_vec(), rest.to_vec(), true);
        assert_eq!(decode_chunks(bare_lf, &[wire]), expect);
        for i in 0..=wire.len() {
            let got = decode_chunks(bare_lf, &[&wire[..i], &wire[i..]]);
            assert_eq!(got, expect, "split at {i}");
            for j in i..=wire.len() {
                let got = decode_chunks(bare_lf, &[&wire[..i], &wire[i..j], &wire[j..]]);
                assert_eq!(got, expect, "split at {i} and {j}");
            }
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_chunks(bare_lf, &bytes), expect);
    }

    #[test]
    fn body_dot_unstuffing_and_terminator_across_every_split() {
        check_all_splits(
            false,
            b"Subject: x\r\n\r\n..hidden\r\n...\r\n.\r\r\nend.\r\n.\r\n+OK next\r\n",
            b"Subject: x\r\n\r\n.hidden\r\n..\r\n\r\r\nend.\r\n",
            b"+OK next\r\n",
        );
    }

    #[test]
    fn empty_body() {
        check_all_splits(false, b".\r\n", b"", b"");
        check_all_splits(false, b".\r\nX", b"", b"X");
    }

    #[test]
    fn bare_lf_inside_a_crlf_body_is_data() {
        // In CRLF mode only CRLF starts a line: "\n.\r\n" is a line of data ending in ".",
        // not the terminator, and its dot is not stuffing.
        check_all_splits(
            false,
            b"a\n.\r\nb\n..c\r\n.\r\n",
            b"a\n.\r\nb\n..c\r\n",
            b"",
        );
    }

    #[test]
    fn bare_lf_server() {
        check_all_splits(true, b"a\n..b\n\n.\n", b"a\n.b\n\n", b"");
        check_all_splits(true, b"a\r\n.\r\nX", b"a\r\n", b"X");
    }

    #[test]
    fn truncated_body_is_not_done() {
        let (out, _, done) = decode_chunks(false, &[b"abc\r\n.\r"]);
        assert_eq!((out.as_slice(), done), (&b"abc\r\n"[..], false));
    }

    #[test]
    fn a_line_of_megabytes_streams_through() {
        // Real mail has single-line HTML and base64 parts of hundreds of KB: no line limit.
        let mut message = b"Subject: long\r\n\r\n".to_vec();
        message.extend(std::iter::repeat_n(b'y', 3 << 20));
        message.extend_from_slice(b"\r\n.dot\r\n");
        let mut wire = message.clone();
        wire.splice(wire.len() - 6..wire.len() - 5, *b"..");
        wire.extend_from_slice(b".\r\n");
        let chunks: Vec<&[u8]> = wire.chunks(64 * 1024 - 7).collect();
        assert_eq!(decode_chunks(false, &chunks), (message, vec![], true));
    }

    #[test]
    fn capabilities() {
        let caps = Capabilities::parse([
            "TOP",
            "UIDL",
            "RESP-CODES",
            "PIPELINING",
            "AUTH-RESP-CODE",
            "USER",
            "SASL PLAIN login XOAUTH2",
            "STLS",
            "IMPLEMENTATION Dovecot",
            "",
        ]);
        assert!(caps.pipelining() && caps.stls() && caps.has("uidl") && caps.has("USER"));
        assert!(!caps.has("APOP"));
        assert_eq!(caps.sasl_mechanisms(), ["PLAIN", "LOGIN", "XOAUTH2"]);
        assert!(caps.has_sasl("login"));
        assert!(!caps.has_sasl("CRAM-MD5"));
        assert_eq!(caps.implementation().as_deref(), Some("Dovecot"));
        assert_eq!(caps.lines().nth(6).unwrap(), "SASL PLAIN login XOAUTH2");
        assert_eq!(caps.login_delay(), None);
        assert_eq!(caps.expire(), None);
        let caps = Capabilities::parse(["LOGIN-DELAY 900 USER", "EXPIRE 0"]);
        assert_eq!(caps.login_delay(), Some(900));
        assert_eq!(caps.expire(), Some(Expire::Days(0)));
        let caps = Capabilities::parse(["EXPIRE never", "LOGIN-DELAY soon"]);
        assert_eq!(caps.expire(), Some(Expire::Never));
        assert_eq!(caps.login_delay(), None);
    }

    #[test]
    fn stat_and_list() {
        assert_eq!(parse_stat("2 320").unwrap(), (2, 320));
        assert_eq!(parse_stat("0 0 extra").unwrap(), (0, 0));
        assert!(matches!(parse_stat("two"), Err(Pop3Error::Protocol { .. })));
        assert_eq!(parse_list_line(b"1 120").unwrap(), (1, 120));
        assert_eq!(
            parse_list_line(b"7  5000000000 extra").unwrap(),
            (7, 5_000_000_000)
        );
        assert!(parse_list_line(b"1").is_err());
        assert!(parse_list_line(b"x 1").is_err());
        assert!(parse_list_line(b"-1 1").is_err());
    }

    #[test]
    fn uidl_lines() {
        assert_eq!(
            parse_uidl_line(b"1 whqtswO00WBw418f9t5JxYwZ").unwrap(),
            (1, "whqtswO00WBw418f9t5JxYwZ".into())
        );
        // Tolerated: long ids, trailing blanks, non-ASCII UTF-8.
        let long = format!("3 {}", "a".repeat(200));
        assert_eq!(parse_uidl_line(long.as_bytes()).unwrap().1.len(), 200);
        let too_long = format!("3 {}", "a".repeat(MAX_UNIQUE_ID + 1));
        assert!(matches!(
            parse_uidl_line(too_long.as_bytes()),
            Err(UidlLineError::BadUid { .. })
        ));
        assert_eq!(parse_uidl_line(b"2 abc  ").unwrap(), (2, "abc".into()));
        assert_eq!(
            parse_uidl_line("4 caf\u{e9}".as_bytes()).unwrap().1,
            "caf\u{e9}"
        );
        // Refused with a reason naming the message.
        for bad in [&b"5 a b"[..], b"5 a\x01b", b"5 a\x7f", b"5 ", b"5 \xff\xfe"] {
            match parse_uidl_line(bad) {
                Err(UidlLineError::BadUid { msgno: 5, .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_uidl_line(b"abc"),
            Err(UidlLineError::Malformed(_))
        ));
        assert!(matches!(
            parse_uidl_line(b""),
            Err(UidlLineError::Malformed(_))
        ));
    }
}
