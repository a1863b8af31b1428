//! A blocking POP3 session over one connection, typed by protocol state.
//!
//! `Session<Authorization>` comes from [`Session::connect`]; only [`Session::login`] turns it
//! into a `Session<Transaction>`, the one that has STAT, LIST, UIDL, RETR, TOP and DELE. The
//! codec does the parsing and [`super::conn`] moves the bytes; this file is the protocol.
//!
//! After an I/O error, a timeout or a protocol violation the session no longer knows where the
//! server is in its reply stream, so it shuts the socket and refuses every later command with
//! [`Pop3Error::Unusable`]; drop it to release the socket. A `-ERR` reply leaves it usable.
//! Dropping a session without [`Session::quit`] never commits deletions (RFC 1939 §6: only
//! QUIT enters UPDATE state).

use std::io::Read;
use std::marker::PhantomData;

use super::auth::{self, AuthMethod};
use super::codec::{self, Capabilities, Command, Reply, RespCode, Status, UidlLineError};
use super::conn::{BodyReader, Conn, Pipeline, rejected};
use super::{Pop3Error, Result, Secret};
use crate::net::sasl;
use crate::net::transport::{self, ConnectOptions, Stream, TlsInfo, TlsMode};

/// Marker: before login (RFC 1939 §4).
#[derive(Debug)]
pub struct Authorization;

/// Marker: logged in, the maildrop is locked (RFC 1939 §5).
#[derive(Debug)]
pub struct Transaction;

/// A message the server refused to RETR (`-ERR`); the run went on with the others.
#[derive(Debug, Clone)]
pub struct Refused {
    pub msgno: u32,
    pub reply: Reply,
}

/// Why [`Session::retrieve`] or [`Session::top`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetrieveError<E> {
    #[error(transparent)]
    Pop3(#[from] Pop3Error),
    /// The connection failed while message `msgno`'s reply was awaited or read.
    #[error("while receiving message {msgno}")]
    Transfer {
        msgno: u32,
        #[source]
        source: Pop3Error,
    },
    #[error("handling message {msgno} failed")]
    Callback {
        msgno: u32,
        #[source]
        source: E,
    },
}

impl<E> RetrieveError<E> {
    /// The POP3 failure, when the connection (not the callback) failed.
    pub fn pop3(&self) -> Option<&Pop3Error> {
        match self {
            RetrieveError::Pop3(e) | RetrieveError::Transfer { source: e, .. } => Some(e),
            RetrieveError::Callback { .. } => None,
        }
    }
}

/// A login method the server refused, kept while the next one is tried.
#[derive(Debug, Clone)]
struct Refusal {
    method: AuthMethod,
    reply: String,
}

/// How a login attempt on one connection ended, if not logged in.
enum LoginFailure {
    /// Refused for good, or the connection failed outright.
    Failed(Pop3Error),
    /// The server hung up after refusing a method: connect again to try the next one.
    HungUp,
}

/// A unique-id line that was skipped by [`Session::uidl_all_lenient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidlWarning {
    pub msgno: u32,
    pub reason: String,
}

/// A UIDL listing with the entries that had to be skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidlListing {
    pub entries: Vec<(u32, String)>,
    pub skipped: Vec<UidlWarning>,
}

/// One POP3 connection in protocol state `S`.
pub struct Session<S> {
    conn: Conn,
    greeting: Reply,
    caps: Option<Capabilities>,
    tls: Option<TlsInfo>,
    host: String,
    port: u16,
    _state: PhantomData<S>,
}

impl<S> Session<S> {
    /// The server greeting (RFC 1939 §4).
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// The latest CAPA answer, or `None` when the server does not know CAPA.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.caps.as_ref()
    }

    /// The server offered PIPELINING (RFC 2449 §6.6).
    pub fn pipelining(&self) -> bool {
        self.caps.as_ref().is_some_and(Capabilities::pipelining)
    }

    /// Negotiated TLS parameters, `None` on a plain connection.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The server's leaf certificate (DER), `None` on a plain connection.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.tls
            .as_ref()
            .and_then(|t| t.peer_certificates.first())
            .map(|c| c.as_ref())
    }

    /// CAPA (RFC 2449 §5): asks again and stores the answer. `None` when the server says -ERR.
    pub fn capa(&mut self) -> Result<Option<&Capabilities>> {
        self.caps = self.conn.guard(Conn::capa)?;
        Ok(self.caps.as_ref())
    }

    /// QUIT (RFC 1939 §6). In the TRANSACTION state this commits the deletions; a `-ERR`
    /// then means some were not removed.
    pub fn quit(mut self) -> Result<()> {
        self.conn.guard(|c| c.simple(Command::Quit).map(drop))
    }

    fn into_state<T>(self) -> Session<T> {
        Session {
            conn: self.conn,
            greeting: self.greeting,
            caps: self.caps,
            tls: self.tls,
            host: self.host,
            port: self.port,
            _state: PhantomData,
        }
    }
}

impl Session<Authorization> {
    /// Connects, reads the greeting, asks CAPA, and with [`TlsMode::StartTls`] upgrades the
    /// connection with STLS (RFC 2595 §4) before anything secret is sent.
    pub fn connect(opts: &ConnectOptions) -> Result<Self> {
        let tcp = transport::connect_tcp(opts)?;
        let (stream, mut tls) = match opts.tls {
            TlsMode::Implicit => {
                let (stream, info) = transport::handshake(tcp, opts)?;
                (stream, Some(info))
            }
            TlsMode::StartTls | TlsMode::None => (Stream::Plain(tcp), None),
        };
        let mut conn = Conn::new(stream, opts)?;
        let greeting = conn.read_reply()?;
        if greeting.status != Status::Ok {
            return Err(rejected("connection", greeting));
        }
        let mut caps = conn.capa()?;
        if opts.tls == TlsMode::StartTls {
            // No silent downgrade: without STLS in CAPA we stop before sending credentials.
            if !caps.as_ref().is_some_and(Capabilities::stls) {
                return Err(Pop3Error::NoStls);
            }
            conn.simple(Command::Stls)?;
            // STARTTLS injection defence (RFC 2595 §4, CVE-2011-0411 style): anything the
            // server sent after its +OK arrived in clear text and must not be read as if it
            // came through TLS.
            if conn.start != conn.end {
                return Err(Pop3Error::protocol(
                    "server sent data after its STLS reply (possible STARTTLS injection)",
                ));
            }
            let Stream::Plain(tcp) = conn.stream else {
                unreachable!("STLS is only sent on a plain connection")
            };
            let (stream, info) = transport::handshake(tcp, opts)?;
            tls = Some(info);
            conn = Conn::new(stream, opts)?;
            // RFC 2595 §4: forget what was learned before TLS; ask again.
            caps = conn.capa()?;
        }
        Ok(Session {
            conn,
            greeting,
            caps,
            tls,
            host: opts.host.clone(),
            port: opts.port,
            _state: PhantomData,
        })
    }

    /// The APOP timestamp in the greeting, if the server offers APOP (RFC 1939 §7).
    pub fn apop_timestamp(&self) -> Option<&str> {
        auth::apop_timestamp(&self.greeting.text)
    }

    /// Logs in with `method`; [`AuthMethod::Auto`] tries the methods of [`auth::candidates`]
    /// in turn, going on to the next after a refusal that says nothing about the credentials
    /// (no response code, or an unknown one). `[AUTH]`, `[SYS/*]`, `[IN-USE]` and
    /// `[LOGIN-DELAY]` end it: retrying another method cannot help, and every wrong password
    /// counts against the account. For the OAuth methods `secret` is the access token. On
    /// success, CAPA is asked again, since servers may offer more (PIPELINING, UIDL,
    /// LOGIN-DELAY) once logged in (RFC 2449 §5).
    ///
    /// Errors never include the secret: a refusal is `Rejected { command: "PASS" | "AUTH" | ..}`
    /// with the server's reply, masked. See [`connect_and_login`] for a server that hangs up
    /// after a refusal.
    pub fn login(
        self,
        user: &str,
        secret: &Secret,
        method: AuthMethod,
    ) -> Result<Session<Transaction>> {
        match self.login_trying(user, secret, method, &mut Vec::new()) {
            Ok(session) => Ok(session),
            Err(LoginFailure::Failed(e)) => Err(e),
            Err(LoginFailure::HungUp) => Err(Pop3Error::Closed),
        }
    }

    /// Tries the candidate methods not in `refused` yet, adding each refusal to it.
    fn login_trying(
        mut self,
        user: &str,
        secret: &Secret,
        method: AuthMethod,
        refused: &mut Vec<Refusal>,
    ) -> Result<Session<Transaction>, LoginFailure> {
        let candidates = auth::candidates(
            method,
            self.caps.as_ref(),
            self.apop_timestamp(),
            self.tls.is_some(),
        )
        .map_err(LoginFailure::Failed)?;
        let remaining: Vec<AuthMethod> = candidates
            .into_iter()
            .filter(|m| !refused.iter().any(|r| r.method == *m))
            .collect();
        let forms = sasl::secret_forms(user, &self.host, self.port, secret);
        self.conn.mask_from_now_on(forms.clone());
        for (i, &method) in remaining.iter().enumerate() {
            let error = match self.attempt(method, user, secret) {
                Ok(()) => {
                    if self.caps.is_some() {
                        self.capa().map_err(LoginFailure::Failed)?;
                    }
                    return Ok(self.into_state());
                }
                Err(Pop3Error::Timeout) => Pop3Error::LoginTimeout {
                    seconds: self.conn.timeout().as_secs(),
                },
                Err(e) => redact_secret(e, &forms),
            };
            let falls_back = matches!(
                &error,
                Pop3Error::Rejected { code, .. } if !code.as_ref().is_some_and(ends_login)
            );
            if falls_back && i + 1 < remaining.len() {
                refused.push(Refusal {
                    method,
                    reply: error.to_string(),
                });
                continue;
            }
            // A server may hang up after a refusal; the method it never answered is tried
            // again on a new connection.
            if !refused.is_empty() && matches!(error, Pop3Error::Closed | Pop3Error::Io(_)) {
                return Err(LoginFailure::HungUp);
            }
            return Err(LoginFailure::Failed(self.final_refusal(error, refused)));
        }
        Err(LoginFailure::Failed(
            self.final_refusal(Pop3Error::Closed, refused),
        ))
    }

    /// One login method on this connection.
    fn attempt(&mut self, method: AuthMethod, user: &str, secret: &Secret) -> Result<()> {
        let no_more = &mut |_: &str| None;
        match method {
            AuthMethod::Auto | AuthMethod::User => self.conn.guard(|c| {
                c.simple(Command::User(user))?;
                c.simple(Command::Pass(secret)).map(drop)
            }),
            AuthMethod::Apop => {
                let stamp = self.apop_timestamp().unwrap_or_default();
                let digest = auth::apop_digest(stamp, secret);
                self.conn.guard(|c| {
                    c.simple(Command::Apop {
                        user,
                        digest: &digest,
                    })
                    .map(drop)
                })
            }
            AuthMethod::Plain => {
                let ir = sasl::plain_response(user, secret);
                self.conn
                    .guard(|c| c.sasl("PLAIN", Some(&ir), no_more, None))
            }
            AuthMethod::CramMd5 => {
                let mut answered = false;
                let mut respond = |challenge: &str| {
                    (!std::mem::replace(&mut answered, true))
                        .then(|| sasl::cram_md5_response(user, secret, challenge))
                };
                self.conn
                    .guard(|c| c.sasl("CRAM-MD5", None, &mut respond, None))
            }
            AuthMethod::Login => {
                let mut answers = sasl::login_responses(user, secret).into_iter();
                let mut respond = |_: &str| answers.next();
                self.conn
                    .guard(|c| c.sasl("LOGIN", None, &mut respond, None))
            }
            // RFC 7628 §3.2.3 and Google's XOAUTH2: after an error challenge the client sends
            // a dummy response (empty for XOAUTH2, %x01 for OAUTHBEARER) to get the -ERR.
            AuthMethod::XOAuth2 => {
                let ir = sasl::xoauth2_response(user, secret);
                self.conn
                    .guard(|c| c.sasl("XOAUTH2", Some(&ir), no_more, Some("")))
            }
            AuthMethod::OAuthBearer => {
                let ir = sasl::oauthbearer_response(user, &self.host, self.port, secret);
                self.conn
                    .guard(|c| c.sasl("OAUTHBEARER", Some(&ir), no_more, Some("AQ==")))
            }
        }
    }

    /// The last refusal, naming the methods refused before it and the SASL mechanisms the
    /// server offers that popvault lacks (the likely reason when every method failed).
    fn final_refusal(&self, error: Pop3Error, refused: &[Refusal]) -> Pop3Error {
        let Pop3Error::Rejected {
            command,
            mut reply,
            code,
        } = error
        else {
            return error;
        };
        if !refused.is_empty() {
            let before: Vec<String> = refused
                .iter()
                .map(|r| format!("{}: {}", r.method, r.reply))
                .collect();
            reply.push_str(&format!("; refused before: {}", before.join("; ")));
        }
        let lacking = auth::unsupported_mechanisms(self.caps.as_ref());
        if !lacking.is_empty() {
            reply.push_str(&format!(
                "; the server also offers SASL {}, which popvault does not support",
                lacking.join(" ")
            ));
        }
        Pop3Error::Rejected {
            command,
            reply,
            code,
        }
    }
}

/// Response codes after which no other login method is tried.
fn ends_login(code: &RespCode) -> bool {
    matches!(
        code,
        RespCode::Auth
            | RespCode::SysTemp
            | RespCode::SysPerm
            | RespCode::InUse
            | RespCode::LoginDelay
    )
}

/// Connects and logs in like [`Session::login`], connecting again when the server hangs up
/// after refusing a method, so that the next method still gets its turn. `on_connected` sees
/// each connection before the login (its greeting, capabilities and TLS), even one whose login
/// then fails.
pub fn connect_and_login(
    opts: &ConnectOptions,
    user: &str,
    secret: &Secret,
    method: AuthMethod,
    on_connected: &mut dyn FnMut(&Session<Authorization>),
) -> Result<Session<Transaction>> {
    let mut refused = Vec::new();
    loop {
        let tried = refused.len();
        let session = Session::connect(opts)?;
        on_connected(&session);
        match session.login_trying(user, secret, method, &mut refused) {
            Ok(session) => return Ok(session),
            Err(LoginFailure::Failed(e)) => return Err(e),
            // Each new connection must have ruled out at least one more method.
            Err(LoginFailure::HungUp) if refused.len() > tried => {}
            Err(LoginFailure::HungUp) => return Err(Pop3Error::Closed),
        }
    }
}

/// A hostile or careless server may quote what it was sent (`-ERR bad password hunter2`): the
/// refusal shown to the user must not carry the secret.
fn redact_secret(error: Pop3Error, forms: &[String]) -> Pop3Error {
    match error {
        Pop3Error::Rejected {
            command,
            reply,
            code,
        } => Pop3Error::Rejected {
            command,
            reply: sasl::mask_secret(&reply, forms),
            code,
        },
        other => other,
    }
}

impl Session<Transaction> {
    /// STAT (RFC 1939 §5): message count and maildrop size in octets.
    pub fn stat(&mut self) -> Result<(u32, u64)> {
        self.conn.guard(|c| {
            let reply = c.simple(Command::Stat)?;
            codec::parse_stat(&reply.text)
        })
    }

    /// LIST (RFC 1939 §5) without argument: every message number and its size.
    pub fn list_all(&mut self) -> Result<Vec<(u32, u64)>> {
        self.conn.guard(|c| {
            c.simple(Command::List(None))?;
            let mut out = Vec::new();
            c.read_listing(|line| {
                out.push(codec::parse_list_line(line)?);
                Ok(())
            })?;
            Ok(out)
        })
    }

    /// UIDL (RFC 1939 §7) without argument: every message number and its unique-id.
    /// `None` when the server answers `-ERR` (no UIDL support). A unique-id we cannot use
    /// (see [`codec::parse_uidl_line`]) is an [`Pop3Error::InvalidUid`] error; the session
    /// stays usable.
    pub fn uidl_all(&mut self) -> Result<Option<Vec<(u32, String)>>> {
        let Some(listing) = self.uidl_all_lenient()? else {
            return Ok(None);
        };
        if let Some(w) = listing.skipped.into_iter().next() {
            return Err(Pop3Error::InvalidUid {
                msgno: w.msgno,
                reason: w.reason,
            });
        }
        Ok(Some(listing.entries))
    }

    /// Like [`Session::uidl_all`], but skips unusable unique-ids and reports them.
    pub fn uidl_all_lenient(&mut self) -> Result<Option<UidlListing>> {
        self.conn.guard(|c| {
            c.send(Command::Uidl(None))?;
            let reply = c.read_reply()?;
            if reply.status != Status::Ok {
                return Ok(None);
            }
            let mut listing = UidlListing::default();
            c.read_listing(|line| {
                match codec::parse_uidl_line(line) {
                    Ok(entry) => listing.entries.push(entry),
                    Err(UidlLineError::BadUid { msgno, reason }) => {
                        listing.skipped.push(UidlWarning { msgno, reason })
                    }
                    Err(UidlLineError::Malformed(what)) => return Err(Pop3Error::protocol(what)),
                }
                Ok(())
            })?;
            for w in &mut listing.skipped {
                w.reason = c.mask(&w.reason);
            }
            Ok(Some(listing))
        })
    }

    /// RETR (RFC 1939 §5) of each message in `msgnos`, in order. `on_message` gets the message
    /// number and a reader of its exact bytes (dot-unstuffed, CRLF kept) that ends at the
    /// terminator; what it leaves unread is skipped. Lines may be of any length: the body
    /// streams, and the caller bounds how much of it it reads.
    ///
    /// With PIPELINING (RFC 2449 §6.6) up to `window` RETRs are in flight (and at most
    /// `MAX_IN_FLIGHT_BYTES` of commands); otherwise one at a time. After a stop request no
    /// more RETRs are sent; the replies already on their way are still read and handed over.
    ///
    /// Returns the messages the server refused (`-ERR`). If `on_message` fails, the session is
    /// abandoned on the spot: the socket is shut without QUIT, so nothing is deleted, and later
    /// calls return [`Pop3Error::Unusable`].
    pub fn retrieve<E, F>(
        &mut self,
        msgnos: &[u32],
        window: usize,
        on_message: F,
    ) -> Result<Vec<Refused>, RetrieveError<E>>
    where
        F: FnMut(u32, &mut dyn Read) -> Result<(), E>,
    {
        let commands = msgnos.iter().map(|&n| Command::Retr(n));
        self.multi_line(msgnos, commands, window, on_message)
    }

    /// TOP (RFC 1939 §7) of each message in `msgnos` with `lines` body lines (0: the header
    /// block and the blank line after it), pipelined like [`Session::retrieve`].
    pub fn top<E, F>(
        &mut self,
        msgnos: &[u32],
        lines: u32,
        window: usize,
        on_message: F,
    ) -> Result<Vec<Refused>, RetrieveError<E>>
    where
        F: FnMut(u32, &mut dyn Read) -> Result<(), E>,
    {
        let commands = msgnos.iter().map(|&msgno| Command::Top { msgno, lines });
        self.multi_line(msgnos, commands, window, on_message)
    }

    /// Sends `commands` (one per message of `msgnos`, each answered by a multi-line reply)
    /// through the pipeline and hands each body to `on_message`.
    fn multi_line<'a, E, F>(
        &mut self,
        msgnos: &[u32],
        commands: impl Iterator<Item = Command<'a>>,
        window: usize,
        mut on_message: F,
    ) -> Result<Vec<Refused>, RetrieveError<E>>
    where
        F: FnMut(u32, &mut dyn Read) -> Result<(), E>,
    {
        let window = if self.pipelining() { window.max(1) } else { 1 };
        let conn = &mut self.conn;
        conn.usable()?;
        let mut refused = Vec::new();
        let mut queue = Pipeline::new(commands, window);
        let mut index = 0;
        loop {
            if conn.stop_requested() {
                queue.stop_sending();
            }
            let Some(&msgno) = msgnos.get(index) else {
                break;
            };
            let transfer = |source| RetrieveError::Transfer { msgno, source };
            if !queue.fill(conn).map_err(|e| transfer(conn.fail(e)))? {
                break;
            }
            index += 1;
            let reply = conn.read_reply().map_err(|e| transfer(conn.fail(e)))?;
            match reply.status {
                Status::Ok => {
                    let mut body = BodyReader::new(conn, reply.bare_lf);
                    let outcome = on_message(msgno, &mut body);
                    // A transport failure under the callback is the real cause; report it
                    // rather than whatever the callback made of the io::Error it saw.
                    if let Some(e) = body.failed.take() {
                        return Err(transfer(conn.fail(e)));
                    }
                    if let Err(source) = outcome {
                        conn.abandon();
                        return Err(RetrieveError::Callback { msgno, source });
                    }
                    body.drain().map_err(|e| transfer(conn.fail(e)))?;
                }
                Status::Err => refused.push(Refused { msgno, reply }),
                Status::Continue => {
                    let e = Pop3Error::protocol("unexpected '+' reply to a multi-line command");
                    return Err(transfer(conn.fail(e)));
                }
            }
            queue.answered();
        }
        Ok(refused)
    }

    /// DELE (RFC 1939 §5): marks a message deleted; it goes at [`Session::quit`].
    pub fn dele(&mut self, msgno: u32) -> Result<()> {
        self.conn
            .guard(|c| c.simple(Command::Dele(msgno)).map(drop))
    }

    /// DELE of many messages, pipelined when the server allows. Returns the ones the server
    /// refused (`-ERR`); the others are marked, and the session stays in step.
    pub fn dele_many(&mut self, msgnos: &[u32]) -> Result<Vec<Refused>> {
        let window = if self.pipelining() { usize::MAX } else { 1 };
        self.conn.guard(|c| {
            let mut queue = Pipeline::new(msgnos.iter().map(|&n| Command::Dele(n)), window);
            let mut refused = Vec::new();
            let mut next = msgnos.iter();
            while queue.fill(c)? {
                let reply = c.read_reply()?;
                let msgno = *next.next().expect("one reply per DELE sent");
                match reply.status {
                    Status::Ok => {}
                    Status::Err => refused.push(Refused { msgno, reply }),
                    Status::Continue => {
                        return Err(Pop3Error::protocol("unexpected '+' reply to DELE"));
                    }
                }
                queue.answered();
            }
            Ok(refused)
        })
    }

    /// NOOP (RFC 1939 §5)
    pub fn noop(&mut self) -> Result<()> {
        self.conn.guard(|c| c.simple(Command::Noop).map(drop))
    }

    /// RSET (RFC 1939 §5): unmarks every message marked deleted.
    pub fn rset(&mut self) -> Result<()> {
        self.conn.guard(|c| c.simple(Command::Rset).map(drop))
    }
}
