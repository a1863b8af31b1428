//! Restore into an IMAP folder with a small IMAP client of our own (RFC 3501 subset).
//!
//! Why our own: a restore needs six commands (CAPABILITY, STARTTLS, AUTHENTICATE/LOGIN, CREATE,
//! EXAMINE, APPEND, plus one FETCH to see what is there). Owning them keeps one TLS stack (the
//! one the POP3 client uses, `crate::net::transport`) and avoids the pre-1.0 IMAP crates whose APIs
//! change every few weeks. Used when offered: LITERAL+ (RFC 7888) so APPENDs are pipelined
//! without waiting for continuations.
//!
//! Bytes: IMAP requires CRLF line ends, so a bare LF is sent as CRLF; every other byte goes as
//! it is, a lone CR included (raw binary parts have them). NUL bytes have no room in a plain
//! literal (RFC 3501): where the server offers BINARY (RFC 3516) a message holding NUL goes as
//! a `literal8`, which Dovecot stores byte for byte; elsewhere it goes as it is (Dovecot keeps
//! it, showing NUL as 0x80), and the report says how many messages held NULs.
//!
//! Folders: `/` in the URL separates levels and becomes the server's hierarchy delimiter; names
//! are sent in modified UTF-7 and quoted, so no folder name can inject a command.
//!
//! Presence: a message is in the folder when a message there has the same size and header
//! block (after the LF normalisation), read with one FETCH of RFC822.SIZE and
//! `BODY.PEEK[HEADER]`. A server message whose BINARY.SIZE differs from its RFC822.SIZE was
//! re-encoded for that FETCH (a literal8 message): it is fetched whole with BINARY.PEEK[].
//! Where archived messages share the key but differ in their bodies, the server's messages with
//! that key are compared whole. Archived messages that normalise to the same bytes (the LF copy
//! of an old client's mbox and the CRLF copy from POP3) are one message to the server: it gets
//! one of them, once.
//!
//! A server finishes the APPENDs it had received from a client that is gone: after a restore
//! killed mid-way, messages may still land for a moment. Before presence looks at a folder, its
//! message count must hold still for a second, or a re-run would add those again.
//! Two restores into one folder at the same time can still both add a message (each looks
//! before the other appends): run one at a time.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};

use super::{Candidate, RestoreError, Sink, Skipped};
use crate::archive::envelope::header_block;
use crate::archive::{Archive, Digest};
use crate::net::Secret;
use crate::net::sasl;
use crate::net::transport::{self, ConnectOptions, Stream, TlsMode, TransportError};
use crate::net::url::{ServerUrl, UrlError};

/// `imap://user@host[:port]/Folder` (STARTTLS) or `imaps://...` (implicit TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapUrl {
    pub implicit_tls: bool,
    pub user: String,
    pub host: String,
    pub port: u16,
    pub folder: String,
}

impl FromStr for ImapUrl {
    type Err = RestoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url: ServerUrl = s.parse().map_err(|e| match e {
            UrlError::PasswordInUrl => RestoreError::Url(e),
            UrlError::Malformed(_) => RestoreError::BadDestination(s.to_string()),
        })?;
        let implicit_tls = match url.scheme.as_str() {
            "imaps" => true,
            "imap" => false,
            _ => return Err(RestoreError::BadDestination(s.to_string())),
        };
        Ok(ImapUrl {
            implicit_tls,
            user: url.user,
            host: url.host,
            port: url.port.unwrap_or(if implicit_tls { 993 } else { 143 }),
            folder: if url.path.is_empty() {
                "INBOX".to_string()
            } else {
                url.path
            },
        })
    }
}

impl fmt::Display for ImapUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.implicit_tls { "imaps" } else { "imap" };
        write!(
            f,
            "{scheme}://{}@{}:{}/{}",
            self.user, self.host, self.port, self.folder
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the IMAP server refused {command}: {reply}")]
    Rejected {
        command: &'static str,
        reply: String,
    },
    #[error(
        "the IMAP server does not offer STARTTLS; the password was not sent, as it would have gone in clear"
    )]
    NoStartTls,
    #[error("IMAP protocol error: {0}")]
    Protocol(String),
    #[error("the IMAP server closed the connection")]
    Closed,
    #[error("timed out waiting for the IMAP server")]
    Timeout,
    #[error("i/o error on the IMAP connection")]
    Io(#[source] io::Error),
    #[error("{0}")]
    Unsupported(String),
}

impl From<io::Error> for ImapError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ImapError::Timeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => ImapError::Closed,
            _ => ImapError::Io(e),
        }
    }
}

/// The longest response line (without literals) and literal this client accepts.
const MAX_LINE: usize = 64 * 1024;
const MAX_LITERAL: u64 = 256 << 20;
/// APPENDs in flight with LITERAL+.
const WINDOW: usize = 128;

/// A folder's messages as presence sees them (see [`Client::folder_view`]): by presence key,
/// and by [`header_identity`].
#[derive(Debug, Default)]
struct FolderView {
    by_key: HashMap<(u64, Digest), Vec<u64>>,
    by_header: HashMap<Digest, Vec<u64>>,
}

/// One server response: its text with each literal replaced by `{n}`, and the literals.
#[derive(Debug, Default)]
struct Response {
    text: String,
    literals: Vec<Vec<u8>>,
}

struct Client {
    reader: BufReader<Stream>,
    next_tag: u32,
    capabilities: HashSet<String>,
    host: String,
    port: u16,
}

/// How to log in to an IMAP server (`forward_auth`): `auto` is AUTHENTICATE PLAIN where
/// offered, else LOGIN; the OAuth ones send the token from the password command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImapAuth {
    #[default]
    Auto,
    Plain,
    Login,
    XOAuth2,
    OAuthBearer,
}

impl FromStr for ImapAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => ImapAuth::Auto,
            "plain" => ImapAuth::Plain,
            "login" => ImapAuth::Login,
            "xoauth2" => ImapAuth::XOAuth2,
            "oauthbearer" => ImapAuth::OAuthBearer,
            _ => {
                return Err(format!(
                    "{s:?} is not an IMAP login method: give auto, plain, login, xoauth2 or oauthbearer"
                ));
            }
        })
    }
}

impl Client {
    fn connect(opts: &ConnectOptions) -> Result<Client, ImapError> {
        let tcp = transport::connect_tcp(opts)?;
        let stream = match opts.tls {
            TlsMode::Implicit => transport::handshake(tcp, opts)?.0,
            _ => Stream::Plain(tcp),
        };
        let mut client = Client {
            reader: BufReader::new(stream),
            next_tag: 1,
            capabilities: HashSet::new(),
            host: opts.host.clone(),
            port: opts.port,
        };
        let greeting = client.read_response()?;
        if !greeting.text.starts_with("* OK") && !greeting.text.starts_with("* PREAUTH") {
            return Err(ImapError::Protocol(format!(
                "unexpected greeting {:?}",
                greeting.text
            )));
        }
        client.capability()?;
        if opts.tls == TlsMode::StartTls {
            if !client.capabilities.contains("STARTTLS") {
                return Err(ImapError::NoStartTls);
            }
            client.simple("STARTTLS", "STARTTLS")?;
            // Anything the server sent after its STARTTLS reply would be injected plaintext.
            if !client.reader.buffer().is_empty() {
                return Err(ImapError::Protocol(
                    "data after the STARTTLS reply (a possible injection attack)".into(),
                ));
            }
            let Stream::Plain(tcp) = client.reader.into_inner() else {
                unreachable!("plain before STARTTLS")
            };
            let (stream, _) = transport::handshake(tcp, opts)?;
            client.reader = BufReader::new(stream);
            client.capability()?;
        }
        Ok(client)
    }

    fn tag(&mut self) -> String {
        let t = format!("p{}", self.next_tag);
        self.next_tag += 1;
        t
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ImapError> {
        self.reader.get_mut().write_all(bytes)?;
        Ok(())
    }

    fn read_response(&mut self) -> Result<Response, ImapError> {
        read_response(&mut self.reader)
    }

    /// Reads responses until the one tagged `tag`; returns it and the untagged ones before it.
    fn complete(&mut self, tag: &str, command: &'static str) -> Result<Vec<Response>, ImapError> {
        complete(&mut self.reader, tag, command)
    }

    /// Waits for the go-ahead (`+`) to send a literal of the command tagged `tag`, skipping
    /// untagged responses (a server may send `* 3 EXISTS` first). `false`: the command was
    /// refused with a tagged NO instead. Anything else leaves the connection out of step, so it
    /// is an error.
    fn continuation(&mut self, tag: &str) -> Result<bool, ImapError> {
        loop {
            let r = self.read_response()?;
            if r.text.starts_with('+') {
                return Ok(true);
            }
            if let Some(rest) = r.text.strip_prefix(tag).and_then(|t| t.strip_prefix(' ')) {
                if rest.starts_with("NO") {
                    return Ok(false);
                }
                return Err(ImapError::Rejected {
                    command: "APPEND",
                    reply: rest.to_string(),
                });
            }
            if !r.text.starts_with("* ") || r.text.starts_with("* BYE") {
                return Err(ImapError::Protocol(format!(
                    "expected a go-ahead for the message, got {:?}",
                    fit_reply(&r.text)
                )));
            }
        }
    }

    fn simple(&mut self, command: &'static str, line: &str) -> Result<Vec<Response>, ImapError> {
        let tag = self.tag();
        self.write(format!("{tag} {line}\r\n").as_bytes())?;
        self.complete(&tag, command)
    }

    fn capability(&mut self) -> Result<(), ImapError> {
        let untagged = self.simple("CAPABILITY", "CAPABILITY")?;
        self.capabilities = capabilities(&untagged);
        Ok(())
    }

    fn login(&mut self, user: &str, secret: &Secret, auth: ImapAuth) -> Result<(), ImapError> {
        let offers = |m: &str| self.capabilities.contains(&format!("AUTH={m}"));
        let (mechanism, response) = match auth {
            ImapAuth::XOAuth2 => ("XOAUTH2", sasl::xoauth2_response(user, secret)),
            ImapAuth::OAuthBearer => (
                "OAUTHBEARER",
                sasl::oauthbearer_response(user, &self.host, self.port, secret),
            ),
            ImapAuth::Plain => (
                "PLAIN",
                BASE64.encode(format!("\0{user}\0{}", secret.expose())),
            ),
            ImapAuth::Auto if offers("PLAIN") => (
                "PLAIN",
                BASE64.encode(format!("\0{user}\0{}", secret.expose())),
            ),
            ImapAuth::Auto | ImapAuth::Login => {
                if self.capabilities.contains("LOGINDISABLED") {
                    return Err(ImapError::Unsupported(
                        "the IMAP server allows no login on this connection (LOGINDISABLED)".into(),
                    ));
                }
                let line = format!("LOGIN {} {}", quote(user)?, quote(secret.expose())?);
                self.simple("LOGIN", &line)?;
                // Servers may announce more after login.
                return self.capability();
            }
        };
        let tag = self.tag();
        if self.capabilities.contains("SASL-IR") {
            self.write(format!("{tag} AUTHENTICATE {mechanism} {response}\r\n").as_bytes())?;
        } else {
            self.write(format!("{tag} AUTHENTICATE {mechanism}\r\n").as_bytes())?;
            let r = self.read_response()?;
            if !r.text.starts_with('+') {
                return Err(ImapError::Rejected {
                    command: "AUTHENTICATE",
                    reply: r.text,
                });
            }
            self.write(format!("{response}\r\n").as_bytes())?;
        }
        // A failed OAuth login gets a `+` with an error challenge first: answered empty.
        loop {
            let r = self.read_response()?;
            if r.text.starts_with('+') {
                self.write(b"\r\n")?;
                continue;
            }
            if let Some(rest) = r.text.strip_prefix(&tag).and_then(|t| t.strip_prefix(' ')) {
                if rest.starts_with("OK") {
                    break;
                }
                return Err(ImapError::Rejected {
                    command: "AUTHENTICATE",
                    reply: rest.to_string(),
                });
            }
        }
        self.capability()
    }

    /// The server's hierarchy delimiter (`LIST "" ""`, RFC 3501 §6.3.8), if it has one.
    fn delimiter(&mut self) -> Result<Option<char>, ImapError> {
        let untagged = self.simple("LIST", "LIST \"\" \"\"")?;
        Ok(untagged.iter().find_map(|r| {
            let rest = r.text.strip_prefix("* LIST ")?;
            let after_flags = rest.split_once(") ")?.1;
            let quoted = after_flags.strip_prefix('"')?;
            let mut chars = quoted.chars();
            match chars.next()? {
                '\\' => chars.next(),
                c => Some(c),
            }
        }))
    }

    /// Opens `folder` read-only, creating it first if it does not exist (unless `create` is
    /// false: then a missing folder counts as empty); returns its message count.
    fn examine_or_create(&mut self, folder: &str, create: bool) -> Result<u64, ImapError> {
        let name = mailbox_name(folder)?;
        let untagged = match self.simple("EXAMINE", &format!("EXAMINE {name}")) {
            Ok(u) => u,
            Err(ImapError::Rejected { .. }) if !create => return Ok(0),
            Err(ImapError::Rejected { .. }) => {
                // Another connection may create it first ([ALREADYEXISTS]): what counts is
                // that it exists now.
                let created = self.simple("CREATE", &format!("CREATE {name}"));
                match self.simple("EXAMINE", &format!("EXAMINE {name}")) {
                    Ok(u) => u,
                    Err(e) => return Err(created.err().unwrap_or(e)),
                }
            }
            Err(e) => return Err(e),
        };
        Ok(exists(&untagged).unwrap_or(0))
    }

    /// Waits until the selected folder's message count has held still for [`SETTLE`] (at most
    /// [`SETTLE_LIMIT`]), and returns it. A server finishes the APPENDs it had received from a
    /// client that is gone (a restore killed mid-way): a re-run that looked before they landed
    /// would add those messages a second time.
    fn settle(&mut self, mut count: u64) -> Result<u64, ImapError> {
        let started = std::time::Instant::now();
        loop {
            std::thread::sleep(SETTLE);
            let now = exists(&self.simple("NOOP", "NOOP")?).unwrap_or(count);
            if now == count || started.elapsed() >= SETTLE_LIMIT {
                return Ok(now);
            }
            count = now;
        }
    }

    /// What the selected folder holds, for presence.
    fn folder_view(&mut self, exists: u64) -> Result<FolderView, ImapError> {
        if exists == 0 {
            return Ok(FolderView::default());
        }
        let untagged = self.simple("FETCH", "FETCH 1:* (RFC822.SIZE BODY.PEEK[HEADER])")?;
        Ok(folder_view(&untagged))
    }

    /// The digest of each whole message `seqs` names (BODY.PEEK[]), as [`whole_digest`]
    /// computes it.
    fn full_digests(&mut self, seqs: &[u64]) -> Result<Vec<Digest>, ImapError> {
        let set: Vec<String> = seqs.iter().map(u64::to_string).collect();
        let untagged = self.simple("FETCH", &format!("FETCH {} BODY.PEEK[]", set.join(",")))?;
        Ok(full_digests(untagged))
    }

    fn logout(&mut self) {
        let _ = self.simple("LOGOUT", "LOGOUT");
    }
}

/// How long a folder's count must hold still before presence looks, and the longest wait.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The last `* N EXISTS` among `untagged`.
fn exists(untagged: &[Response]) -> Option<u64> {
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

fn read_line(reader: &mut impl BufRead) -> Result<Vec<u8>, ImapError> {
    let mut line = Vec::new();
    let n = io::Read::take(&mut *reader, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(ImapError::Closed);
    }
    if !line.ends_with(b"\n") {
        return Err(ImapError::Protocol(format!(
            "a response line longer than {MAX_LINE} bytes"
        )));
    }
    line.pop();
    if line.ends_with(b"\r") {
        line.pop();
    }
    Ok(line)
}

/// Reads one response, with its literals (each at most `MAX_LITERAL` bytes, memory growing only
/// as the bytes arrive).
fn read_response(reader: &mut impl BufRead) -> Result<Response, ImapError> {
    let mut response = Response::default();
    loop {
        let line = read_line(reader)?;
        let text = String::from_utf8_lossy(&line).into_owned();
        let literal = text
            .strip_suffix('}')
            .and_then(|t| t.rsplit_once('{'))
            .and_then(|(_, n)| n.trim_end_matches('+').parse::<u64>().ok());
        response.text.push_str(&text);
        let Some(len) = literal else {
            return Ok(response);
        };
        if len > MAX_LITERAL {
            return Err(ImapError::Protocol(format!("a literal of {len} bytes")));
        }
        let mut bytes = Vec::new();
        io::Read::take(&mut *reader, len).read_to_end(&mut bytes)?;
        if bytes.len() as u64 != len {
            return Err(ImapError::Closed);
        }
        response.literals.push(bytes);
    }
}

/// Reads responses until the one tagged `tag`; returns the untagged ones before it.
fn complete(
    reader: &mut impl BufRead,
    tag: &str,
    command: &'static str,
) -> Result<Vec<Response>, ImapError> {
    let mut untagged = Vec::new();
    let mut held = 0usize;
    loop {
        let r = read_response(reader)?;
        // Bounded memory against a server that never ends its answer.
        held += r.text.len() + r.literals.iter().map(Vec::len).sum::<usize>();
        if held > MAX_UNTAGGED_BYTES {
            return Err(ImapError::Protocol(format!(
                "the answer to {command} is larger than {} MiB",
                MAX_UNTAGGED_BYTES >> 20
            )));
        }
        if let Some(rest) = r.text.strip_prefix(tag).and_then(|t| t.strip_prefix(' ')) {
            if rest.starts_with("OK") {
                return Ok(untagged);
            }
            return Err(ImapError::Rejected {
                command,
                reply: rest.to_string(),
            });
        }
        if r.text.starts_with("* BYE") {
            return Err(ImapError::Rejected {
                command,
                reply: r.text,
            });
        }
        untagged.push(r);
    }
}

fn capabilities(untagged: &[Response]) -> HashSet<String> {
    untagged
        .iter()
        .filter_map(|r| r.text.strip_prefix("* CAPABILITY "))
        .flat_map(|caps| caps.split(' ').map(|c| c.to_ascii_uppercase()))
        .collect()
}

/// The folder as the answer to `FETCH 1:* (RFC822.SIZE BODY.PEEK[HEADER])` shows it.
fn folder_view(untagged: &[Response]) -> FolderView {
    let mut view = FolderView::default();
    for r in untagged.iter().filter(|r| r.text.contains(" FETCH ")) {
        let number = |item: &str| {
            r.text
                .split(item)
                .nth(1)
                .and_then(|t| t.split([' ', ')']).next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        let (Some(size), Some(seq)) = (number("RFC822.SIZE "), sequence_number(&r.text)) else {
            continue;
        };
        let header = match r.literals.first() {
            Some(h) => h.clone(),
            None => quoted_after(&r.text, "BODY[HEADER] ").unwrap_or_default(),
        };
        view.by_key
            .entry((size, digest_as_fetched(&header)))
            .or_default()
            .push(seq);
        view.by_header
            .entry(header_identity(&header))
            .or_default()
            .push(seq);
    }
    view
}

/// The digest of each message in the answer to `FETCH … BODY.PEEK[]`.
fn full_digests(untagged: Vec<Response>) -> Vec<Digest> {
    untagged
        .into_iter()
        .filter(|r| r.text.contains(" FETCH "))
        .map(|mut r| match r.literals.pop() {
            Some(bytes) => whole_digest(&bytes),
            None => whole_digest(&quoted_after(&r.text, "BODY[] ").unwrap_or_default()),
        })
        .collect()
}

/// Runs what a restore reads from a server over `input`, as if it were the answer to a command
/// tagged `p1`: the response reader and every parser of what it returns. For the fuzz target
/// (`fuzz/fuzz_targets/imap_responses.rs`); nothing may panic, loop or take unbounded memory.
#[doc(hidden)]
pub fn fuzz_responses(mut input: &[u8]) {
    if let Ok(untagged) = complete(&mut input, "p1", "FETCH") {
        let _ = capabilities(&untagged);
        let _ = folder_view(&untagged);
        for r in &untagged {
            let _ = sequence_number(&r.text);
        }
        let _ = full_digests(untagged);
    }
    while read_response(&mut input).is_ok() {}
}

/// The message sequence number of an untagged `* N FETCH` response.
fn sequence_number(text: &str) -> Option<u64> {
    text.strip_prefix("* ")?.split(' ').next()?.parse().ok()
}

/// The bytes of a quoted string that follows `prefix` in `text`.
fn quoted_after(text: &str, prefix: &str) -> Option<Vec<u8>> {
    let rest = text.split(prefix).nth(1)?.strip_prefix('"')?;
    let mut out = Vec::new();
    let mut chars = rest.bytes();
    while let Some(b) = chars.next() {
        match b {
            b'\\' => out.push(chars.next()?),
            b'"' => return Some(out),
            _ => out.push(b),
        }
    }
    None
}

/// An IMAP quoted string; CR, LF and NUL cannot be quoted and are refused.
fn quote(s: &str) -> Result<String, ImapError> {
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
pub fn mailbox_name(folder: &str) -> Result<String, ImapError> {
    quote(&modified_utf7(folder))
}

fn modified_utf7(s: &str) -> String {
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

/// The most bytes of untagged responses kept for one command (headers of a very large folder
/// fit many times over).
const MAX_UNTAGGED_BYTES: usize = 1 << 30;

/// At most 200 characters of a server's line, for an error message.
fn fit_reply(text: &str) -> String {
    text.chars().take(200).collect()
}

/// A bare LF becomes CRLF, the line end IMAP requires; every other byte stays, a lone CR too.
pub fn crlf_normalise(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut previous = 0u8;
    for &b in raw {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    out
}

/// The presence key of a message: the size and the SHA-256 of the header block of its
/// canonical form (see [`canonical`]), with NUL read as 0x80 (a server cannot send NUL in a
/// FETCH without BINARY; Dovecot sends 0x80).
pub fn presence_key(normalised: &[u8]) -> (u64, Digest) {
    let canonical = canonical(normalised);
    (
        canonical.len() as u64,
        digest_as_fetched(header_block(&canonical)),
    )
}

/// The bytes as a server may store them: CRs right before a CRLF dropped. Dovecot keeps mail
/// with LF line ends (its default `mail_save_crlf = no`), so CR CR LF comes back as CR LF.
/// Presence compares this form on both sides, so such a message is found again, not added on
/// every run.
fn canonical(normalised: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !normalised.windows(3).any(|w| w == b"\r\r\n") {
        return std::borrow::Cow::Borrowed(normalised);
    }
    let mut out = Vec::with_capacity(normalised.len());
    for &b in normalised {
        if b == b'\n' {
            while out.len() >= 2 && out[out.len() - 1] == b'\r' && out[out.len() - 2] == b'\r' {
                out.remove(out.len() - 2);
            }
        }
        out.push(b);
    }
    std::borrow::Cow::Owned(out)
}

/// The digest a message is compared whole by: of its canonical form, NUL read as 0x80.
fn whole_digest(normalised: &[u8]) -> Digest {
    digest_as_fetched(&canonical(normalised))
}

/// SHA-256 with NUL read as 0x80, as a server sends it in a FETCH without BINARY.
fn digest_as_fetched(bytes: &[u8]) -> Digest {
    let mapped: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == 0 { 0x80 } else { b })
        .collect();
    Digest::of(&mapped)
}

fn internal_date(t: DateTime<Utc>) -> String {
    t.format("%d-%b-%Y %H:%M:%S +0000").to_string()
}

pub struct ImapSink {
    dry_run: bool,
    client: Client,
    folder: String,
    literal_plus: bool,
    /// MULTIAPPEND (RFC 3502) with LITERAL+: messages go in groups, one command (and one
    /// server-side commit) each.
    multiappend: bool,
    /// Messages waiting to be sent as one MULTIAPPEND.
    group: Vec<(Candidate, Vec<u8>)>,
    group_bytes: usize,
    /// APPENDs sent and not yet answered.
    in_flight: std::collections::VecDeque<InFlight>,
    /// Messages of a refused group, to be sent again one by one once nothing is in flight.
    retry_singly: Vec<(Candidate, Vec<u8>)>,
    /// Messages the server refused, with its reply.
    refused: Vec<Skipped>,
    /// BINARY (RFC 3516): a message holding NUL goes as a literal8.
    binary: bool,
    /// Messages holding NUL sent to a server without BINARY.
    nul_messages: usize,
}

struct InFlight {
    tag: String,
    messages: Vec<Candidate>,
    /// The bytes, kept for groups only (a refused group is retried message by message).
    bytes: Vec<Vec<u8>>,
}

/// A MULTIAPPEND group holds at most this many messages or bytes...
const GROUP_MESSAGES: usize = 100;
const GROUP_BYTES: usize = 4 << 20;
/// ...and at most this many groups are in flight.
const GROUP_WINDOW: usize = 4;

fn flag_list(c: &Candidate) -> String {
    let mut flags = Vec::new();
    for (on, name) in [
        (c.flags.seen, "\\Seen"),
        (c.flags.answered, "\\Answered"),
        (c.flags.flagged, "\\Flagged"),
        (c.flags.draft, "\\Draft"),
    ] {
        if on {
            flags.push(name);
        }
    }
    flags.join(" ")
}

impl ImapSink {
    /// Connects and logs in; with `dry_run` the sink only looks (no folder is created).
    pub fn open(
        url: &ImapUrl,
        connect: &ConnectOptions,
        secret: &Secret,
        auth: ImapAuth,
        dry_run: bool,
    ) -> Result<ImapSink, ImapError> {
        let mut client = Client::connect(connect)?;
        // A server may quote what it was sent in its refusal: never show the secret.
        let forms = sasl::secret_forms(&url.user, &url.host, url.port, secret);
        client.login(&url.user, secret, auth).map_err(|e| match e {
            ImapError::Rejected { command, reply } => ImapError::Rejected {
                command,
                reply: sasl::mask_secret(&reply, &forms),
            },
            other => other,
        })?;
        let literal_plus = client.capabilities.contains("LITERAL+");
        // `/` in the URL separates levels (RFC 5092); the server may use another delimiter.
        let folder = match client.delimiter()? {
            Some(d) if d != '/' => url.folder.replace('/', &d.to_string()),
            _ => url.folder.clone(),
        };
        let multiappend = literal_plus && client.capabilities.contains("MULTIAPPEND");
        Ok(ImapSink {
            folder,
            dry_run,
            literal_plus,
            multiappend,
            group: Vec::new(),
            group_bytes: 0,
            in_flight: Default::default(),
            retry_singly: Vec::new(),
            refused: Vec::new(),
            binary: client.capabilities.contains("BINARY"),
            nul_messages: 0,
            client,
        })
    }

    /// Makes sure the folder exists (creating it), without reading what it holds.
    pub fn ensure_folder(&mut self) -> Result<(), ImapError> {
        self.client.examine_or_create(&self.folder, true).map(drop)
    }

    /// Waits for the oldest APPEND's answer; a refusal of that message is recorded, not fatal.
    fn wait_for_one(&mut self) -> Result<(), ImapError> {
        let Some(sent) = self.in_flight.pop_front() else {
            return Ok(());
        };
        match self.client.complete(&sent.tag, "APPEND") {
            Ok(_) => Ok(()),
            // A refused group stored none of its messages (RFC 3502 §6.3.11): each goes again alone.
            Err(ImapError::Rejected { .. }) if sent.messages.len() > 1 => {
                self.retry_singly
                    .extend(sent.messages.into_iter().zip(sent.bytes));
                Ok(())
            }
            Err(ImapError::Rejected { reply, .. }) if reply.starts_with("NO") => {
                let c = &sent.messages[0];
                self.refused.push(Skipped {
                    id: c.id,
                    reason: format!("the IMAP server refused it: {reply}"),
                    subject: c.subject.clone(),
                });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `messages` (already CRLF-normalised) as one APPEND command, a MULTIAPPEND when more
    /// than one. Without LITERAL+ each literal waits for the server's go-ahead.
    fn send(&mut self, messages: Vec<(Candidate, Vec<u8>)>) -> Result<(), ImapError> {
        let tag = self.client.tag();
        let name = mailbox_name(&self.folder)?;
        self.client
            .write(format!("{tag} APPEND {name}").as_bytes())?;
        for (c, bytes) in &messages {
            let plus = if self.literal_plus { "+" } else { "" };
            // RFC 3516 §4.3: a literal8 may carry NUL; a plain literal may not.
            let eight = if bytes.contains(&0) {
                if self.binary {
                    "~"
                } else {
                    self.nul_messages += 1;
                    ""
                }
            } else {
                ""
            };
            self.client.write(
                format!(
                    " ({}) \"{}\" {eight}{{{}{plus}}}\r\n",
                    flag_list(c),
                    internal_date(c.time),
                    bytes.len()
                )
                .as_bytes(),
            )?;
            if !self.literal_plus && !self.client.continuation(&tag)? {
                // Refused before its literal was sent (only ever one message without
                // LITERAL+): the connection is in step, the next message may go.
                self.refused.push(Skipped {
                    id: c.id,
                    reason: "the IMAP server refused to take it (APPEND NO)".into(),
                    subject: c.subject.clone(),
                });
                return Ok(());
            }
            self.client.write(bytes)?;
        }
        self.client.write(b"\r\n")?;
        let keep = messages.len() > 1;
        let (candidates, bytes): (Vec<Candidate>, Vec<Vec<u8>>) = messages.into_iter().unzip();
        self.in_flight.push_back(InFlight {
            tag,
            messages: candidates,
            bytes: if keep { bytes } else { Vec::new() },
        });
        let window = match (self.literal_plus, keep) {
            (false, _) => 1,
            (true, true) => GROUP_WINDOW,
            (true, false) => WINDOW,
        };
        while self.in_flight.len() >= window {
            self.wait_for_one()?;
        }
        Ok(())
    }

    fn send_group(&mut self) -> Result<(), ImapError> {
        if !self.group.is_empty() {
            let group = std::mem::take(&mut self.group);
            self.group_bytes = 0;
            self.send(group)?;
        }
        Ok(())
    }
}

/// When a message was sent, by whom, and its subject: what two copies of one mail share.
type Envelope = (DateTime<Utc>, Option<String>, Option<String>);

/// What presence knows of an archived message, after the LF normalisation.
struct Archived {
    key: (u64, Digest),
    /// [`header_identity`] of its header block.
    header: Digest,
    whole: Digest,
    /// It has a part whose transfer encoding is binary, which a server shows re-encoded (to
    /// base64) in a FETCH without BINARY: size, body and that part's headers differ there.
    re_encoded_in_view: bool,
}

impl Archived {
    fn of(normalised: &[u8]) -> Archived {
        Archived {
            key: presence_key(normalised),
            header: header_identity(header_block(&canonical(normalised))),
            whole: whole_digest(normalised),
            re_encoded_in_view: normalised
                .windows(33)
                .any(|w| w.eq_ignore_ascii_case(b"content-transfer-encoding: binary")),
        }
    }
}

/// A header block's digest without its Content-Transfer-Encoding lines (NUL read as 0x80):
/// what a server re-encoding a binary message for display leaves of its identity.
fn header_identity(header: &[u8]) -> Digest {
    let kept: Vec<u8> = header
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| {
            !(line.len() >= 26 && line[..26].eq_ignore_ascii_case(b"content-transfer-encoding:"))
        })
        .flatten()
        .copied()
        .collect();
    digest_as_fetched(&kept)
}

impl ImapSink {
    /// The whole digests, among `archived`, of the messages the folder holds.
    fn held<'a>(
        &mut self,
        view: &FolderView,
        archived: impl Iterator<Item = &'a Archived>,
    ) -> Result<HashSet<Digest>, ImapError> {
        let mut held = HashSet::new();
        let mut by_key: HashMap<(u64, Digest), HashSet<Digest>> = HashMap::new();
        for a in archived {
            if view.by_key.contains_key(&a.key) {
                by_key.entry(a.key).or_default().insert(a.whole);
            } else if a.re_encoded_in_view && view.by_header.contains_key(&a.header) {
                // Its size and body are the re-encoded ones there: known by its headers.
                held.insert(a.whole);
            }
        }
        for (key, wholes) in by_key {
            if wholes.len() == 1 {
                held.extend(wholes);
            } else {
                // Archived messages that share size and headers but differ in their bodies:
                // the key cannot tell them apart, so the server's copies are compared whole.
                held.extend(self.client.full_digests(&view.by_key[&key])?);
            }
        }
        Ok(held)
    }
}

impl Sink for ImapSink {
    fn present(
        &mut self,
        archive: &Archive,
        candidates: &[Candidate],
    ) -> Result<HashSet<Digest>, RestoreError> {
        // Even an empty folder: a killed run's first APPENDs may not have landed yet.
        let exists = self.client.examine_or_create(&self.folder, !self.dry_run)?;
        let exists = self.client.settle(exists)?;
        let view = self.client.folder_view(exists)?;
        let largest = view.by_key.keys().map(|(size, _)| *size).max().unwrap_or(0);
        // Archived messages that may be in the folder, or may be one message to the server:
        // those that may match a server message, and those that share a date, sender and
        // subject with another candidate (the LF and the CRLF copy of a mail).
        let envelope = |c: &Candidate| (c.time, c.from.clone(), c.subject.clone());
        let mut envelopes: HashMap<Envelope, usize> = HashMap::new();
        for c in candidates {
            *envelopes.entry(envelope(c)).or_default() += 1;
        }
        let mut archived: HashMap<Digest, Archived> = HashMap::new();
        for c in candidates {
            let twin = envelopes[&envelope(c)] > 1;
            // Normalisation only adds bytes: one larger than every server message is new (one
            // the server shows re-encoded is larger there, never smaller).
            if c.size > largest && !twin {
                continue;
            }
            let raw = match archive.read_message(&c.id) {
                Ok(raw) => raw,
                // Reported and skipped when the restore reads it again.
                Err(crate::archive::ArchiveError::DamagedMessage { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            archived.insert(c.id, Archived::of(&crlf_normalise(&raw)));
        }
        let held = self.held(&view, archived.values())?;
        // Present: what the server holds already, and every later twin of a message that will
        // be restored (the first, oldest, goes; the server then holds it once).
        let mut present = HashSet::new();
        let mut going: HashSet<Digest> = HashSet::new();
        for c in candidates {
            let Some(a) = archived.get(&c.id) else {
                continue;
            };
            if held.contains(&a.whole) || !going.insert(a.whole) {
                present.insert(c.id);
            }
        }
        Ok(present)
    }

    fn warnings(&mut self) -> Vec<String> {
        match std::mem::take(&mut self.nul_messages) {
            0 => Vec::new(),
            n => vec![format!(
                "{n} messages held NUL bytes, which IMAP without BINARY (RFC 3516) cannot carry: the server may have altered them"
            )],
        }
    }

    fn put(&mut self, c: &Candidate, raw: &[u8]) -> Result<(), RestoreError> {
        let bytes = crlf_normalise(raw);
        if !self.multiappend {
            return Ok(self.send(vec![(c.clone(), bytes)])?);
        }
        self.group_bytes += bytes.len();
        self.group.push((c.clone(), bytes));
        if self.group.len() >= GROUP_MESSAGES || self.group_bytes >= GROUP_BYTES {
            self.send_group()?;
        }
        Ok(())
    }

    /// Between chunks the APPENDs stay in flight (the server works while the next chunk is
    /// read); `finish` waits for every answer.
    fn flush(&mut self) -> Result<Vec<Skipped>, RestoreError> {
        Ok(std::mem::take(&mut self.refused))
    }

    fn finish(&mut self) -> Result<Vec<Skipped>, RestoreError> {
        self.send_group()?;
        while !self.in_flight.is_empty() {
            self.wait_for_one()?;
        }
        for message in std::mem::take(&mut self.retry_singly) {
            self.send(vec![message])?;
        }
        while !self.in_flight.is_empty() {
            self.wait_for_one()?;
        }
        self.client
            .reader
            .get_mut()
            .flush()
            .map_err(ImapError::from)?;
        Ok(std::mem::take(&mut self.refused))
    }
}

impl Drop for ImapSink {
    fn drop(&mut self) {
        if self.in_flight.is_empty() {
            self.client.logout();
        }
    }
}

impl fmt::Debug for ImapSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImapSink({}, {})", self.client.host, self.folder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports_and_folders() {
        let u: ImapUrl = "imaps://alice@mail.example.com/Archive%2F2024"
            .parse()
            .unwrap();
        assert_eq!(
            (u.port, u.folder.as_str(), u.implicit_tls),
            (993, "Archive/2024", true)
        );
        let u: ImapUrl = "imap://bob@127.0.0.1:1143".parse().unwrap();
        assert_eq!(
            (u.port, u.folder.as_str(), u.implicit_tls),
            (1143, "INBOX", false)
        );
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

    #[test]
    fn bare_line_ends_become_crlf() {
        assert_eq!(
            crlf_normalise(b"a\nb\r\nc\rd\r\r\n"),
            b"a\r\nb\r\nc\rd\r\r\n"
        );
        assert_eq!(crlf_normalise(b"\n\n"), b"\r\n\r\n");
        let (size, _) = presence_key(b"A: b\r\n\r\nbody");
        assert_eq!(size, 12);
        assert_eq!(
            &*canonical(b"a\r\r\r\nb\r\r\n\rc\r\n"),
            b"a\r\nb\r\n\rc\r\n"
        );
        assert_eq!(
            presence_key(b"S: x\r\n\r\nb\r\r\n"),
            presence_key(b"S: x\r\n\r\nb\r\n")
        );
    }
}
