//! Our IMAP client (an RFC 3501 subset), shared by `restore --to imap://` and `forward`.
//!
//! Why our own, not `imap-codec`: restore and forward need a handful of commands (CAPABILITY,
//! STARTTLS, AUTHENTICATE/LOGIN, LIST, CREATE, EXAMINE, APPEND, NOOP, FETCH) and read back only
//! lines, literals and tagged ends. imap-codec is sans-IO and fuzzed too, but its current line
//! is a 2.0 alpha with breaking releases every few weeks (`../shared/notes/crates.md`), and its
//! full grammar would parse far more than we read. Owning these ~600 lines keeps one TLS stack
//! (the POP3 client's, `crate::net::transport`) and a reader we can bound exactly.
//!
//! The split is the POP3 client's: [`codec`] is sans-IO (bytes in, responses out: lines,
//! literals, a command's tagged end, all bounded), fuzzed by `fuzz/fuzz_targets/imap_responses.rs`
//! (no panic, no loop, no memory beyond the limits, the same responses however the bytes are
//! split); this file holds the connection and the commands.
//!
//! Folders: `/` in the URL separates levels and becomes the server's hierarchy delimiter; names
//! are sent in modified UTF-7 and quoted, so no folder name can inject a command.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

mod codec;

#[doc(hidden)]
pub use codec::assert_split_alike;
use codec::{Completion, ResponseDecoder};
pub(crate) use codec::{
    Response, capabilities, exists, fit_reply, mailbox_name, modified_utf7, quote,
};

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
    type Err = ImapError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url: ServerUrl = s.parse().map_err(|e| match e {
            UrlError::PasswordInUrl => ImapError::Url(e),
            UrlError::Malformed(_) => ImapError::BadUrl(s.to_string()),
        })?;
        let implicit_tls = match url.scheme.as_str() {
            "imaps" => true,
            "imap" => false,
            _ => return Err(ImapError::BadUrl(s.to_string())),
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
    #[error(
        "{0:?} is not an IMAP folder URL: write imap://USER@HOST[:PORT]/FOLDER (STARTTLS) or imaps://..."
    )]
    BadUrl(String),
    #[error(transparent)]
    Url(UrlError),
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

pub(crate) struct Client {
    pub(crate) reader: BufReader<Stream>,
    next_tag: u32,
    pub(crate) capabilities: HashSet<String>,
    pub(crate) host: String,
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
    pub(crate) fn connect(opts: &ConnectOptions) -> Result<Client, ImapError> {
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

    pub(crate) fn tag(&mut self) -> String {
        let t = format!("p{}", self.next_tag);
        self.next_tag += 1;
        t
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), ImapError> {
        self.reader.get_mut().write_all(bytes)?;
        Ok(())
    }

    pub(crate) fn read_response(&mut self) -> Result<Response, ImapError> {
        read_response(&mut self.reader)
    }

    /// Reads responses until the one tagged `tag`; returns it and the untagged ones before it.
    pub(crate) fn complete(
        &mut self,
        tag: &str,
        command: &'static str,
    ) -> Result<Vec<Response>, ImapError> {
        complete(&mut self.reader, tag, command)
    }

    /// Waits for the go-ahead (`+`) to send a literal of the command tagged `tag`, skipping
    /// untagged responses (a server may send `* 3 EXISTS` first). `false`: the command was
    /// refused with a tagged NO instead. Anything else leaves the connection out of step, so it
    /// is an error.
    pub(crate) fn continuation(&mut self, tag: &str) -> Result<bool, ImapError> {
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

    pub(crate) fn simple(
        &mut self,
        command: &'static str,
        line: &str,
    ) -> Result<Vec<Response>, ImapError> {
        let tag = self.tag();
        self.write(format!("{tag} {line}\r\n").as_bytes())?;
        self.complete(&tag, command)
    }

    pub(crate) fn capability(&mut self) -> Result<(), ImapError> {
        let untagged = self.simple("CAPABILITY", "CAPABILITY")?;
        self.capabilities = capabilities(&untagged);
        Ok(())
    }

    pub(crate) fn login(
        &mut self,
        user: &str,
        secret: &Secret,
        auth: ImapAuth,
    ) -> Result<(), ImapError> {
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
    pub(crate) fn delimiter(&mut self) -> Result<Option<char>, ImapError> {
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
    pub(crate) fn examine_or_create(
        &mut self,
        folder: &str,
        create: bool,
    ) -> Result<u64, ImapError> {
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
    pub(crate) fn settle(&mut self, mut count: u64) -> Result<u64, ImapError> {
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

    pub(crate) fn logout(&mut self) {
        let _ = self.simple("LOGOUT", "LOGOUT");
    }
}

/// How long a folder's count must hold still before presence looks, and the longest wait.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads one response, with its literals: the decoder fed from the stream's buffer.
pub(crate) fn read_response(reader: &mut impl BufRead) -> Result<Response, ImapError> {
    let mut decoder = ResponseDecoder::default();
    loop {
        let input = reader.fill_buf()?;
        if input.is_empty() {
            return Err(ImapError::Closed);
        }
        let (used, response) = decoder.decode(input)?;
        reader.consume(used);
        if let Some(response) = response {
            return Ok(response);
        }
    }
}

/// Reads responses until the one tagged `tag`; returns the untagged ones before it.
pub(crate) fn complete(
    reader: &mut impl BufRead,
    tag: &str,
    command: &'static str,
) -> Result<Vec<Response>, ImapError> {
    let mut completion = Completion::new(tag, command);
    loop {
        if let Some(untagged) = completion.push(read_response(reader)?)? {
            return Ok(untagged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn urls_parse_with_default_ports_and_folders() {
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
}
