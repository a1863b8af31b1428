//! A blocking POP3 session over one connection, typed by protocol state.
//!
//! `Session<Authorization>` comes from [`Session::connect`]; only [`Session::login`] turns it
//! into a `Session<Transaction>`, the one that has STAT, LIST, UIDL, RETR and DELE. The codec
//! does the parsing; this file only moves bytes between it and the socket.
//!
//! After an I/O error, a timeout or a protocol violation the session no longer knows where the
//! server is in its reply stream, so it shuts the socket and refuses every later command with
//! [`Pop3Error::Unusable`]; drop it to release the socket. A `-ERR` reply leaves it usable. Dropping a session without
//! [`Session::quit`] never commits deletions (RFC 1939 §6: only QUIT enters UPDATE state).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::ops::Range;

use super::auth::{self, AuthMethod};
use super::codec::{
    self, BodyDecoder, BodyEvent, Capabilities, Command, Reply, STATUS_LINE_LIMIT, Status,
    UidlLineError,
};
use super::{Pop3Error, Result, Secret};
use crate::transport::{self, ConnectOptions, Stream, TlsInfo, TlsMode};

/// The most lines a multi-line reply (LIST, UIDL, CAPA) may have: far beyond any real
/// mailbox, and bounded memory against a server that never ends one.
const MAX_LISTING_LINES: u64 = 4_000_000;

/// Read buffer size. It must exceed [`STATUS_LINE_LIMIT`] so a whole status line always fits.
const READ_BUFFER: usize = 64 * 1024;

/// Most command bytes in flight (sent, not yet answered) when pipelining. The kernel send
/// buffer is far larger, so writing them can never block while the server, itself blocked on
/// writing replies we are not reading yet, has stopped reading: no deadlock.
const MAX_IN_FLIGHT_BYTES: usize = 2048;

/// RFC 2449 §4: a command line is at most 255 octets. Longer AUTH initial responses (OAuth
/// tokens) are sent after an empty challenge instead (RFC 5034 §4).
const MAX_COMMAND_LINE: usize = 255;

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

/// Why [`Session::retrieve`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetrieveError<E> {
    #[error(transparent)]
    Pop3(#[from] Pop3Error),
    #[error("handling message {msgno} failed")]
    Callback {
        msgno: u32,
        #[source]
        source: E,
    },
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
        let mut conn = Conn::new(stream);
        let greeting = conn.read_reply()?;
        if greeting.status != Status::Ok {
            return Err(Pop3Error::Rejected {
                command: "connection",
                reply: greeting.to_string(),
            });
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
            conn = Conn::new(stream);
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

    /// Logs in with `method` ([`AuthMethod::Auto`]: see [`auth::choose`]). For the OAuth
    /// methods `secret` is the access token. On success, CAPA is asked again, since servers
    /// may offer more (PIPELINING, UIDL) once logged in (RFC 2449 §5).
    ///
    /// Errors never include the secret: a refusal is `Rejected { command: "PASS" | "AUTH" | ..}`
    /// with the server's reply.
    pub fn login(
        mut self,
        user: &str,
        secret: &Secret,
        method: AuthMethod,
    ) -> Result<Session<Transaction>> {
        let method = auth::choose(
            method,
            self.caps.as_ref(),
            self.apop_timestamp(),
            self.tls.is_some(),
        )?;
        let result = match method {
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
                let ir = auth::plain_response(user, secret);
                self.conn
                    .guard(|c| c.sasl("PLAIN", Some(&ir), Vec::new(), None))
            }
            AuthMethod::Login => {
                let [u, p] = auth::login_responses(user, secret);
                self.conn.guard(|c| c.sasl("LOGIN", None, vec![u, p], None))
            }
            // RFC 7628 §3.2.3 and Google's XOAUTH2: after an error challenge the client sends
            // a dummy response (empty for XOAUTH2, %x01 for OAUTHBEARER) to get the -ERR.
            AuthMethod::XOAuth2 => {
                let ir = auth::xoauth2_response(user, secret);
                self.conn
                    .guard(|c| c.sasl("XOAUTH2", Some(&ir), Vec::new(), Some("")))
            }
            AuthMethod::OAuthBearer => {
                let ir = auth::oauthbearer_response(user, &self.host, self.port, secret);
                self.conn
                    .guard(|c| c.sasl("OAUTHBEARER", Some(&ir), Vec::new(), Some("AQ==")))
            }
        };
        let forms = auth::secret_forms(user, &self.host, self.port, secret);
        result.map_err(|e| redact_secret(e, &forms))?;
        if self.caps.is_some() {
            self.capa()?;
        }
        Ok(self.into_state())
    }
}

/// A hostile or careless server may quote what it was sent (`-ERR bad password hunter2`): the
/// refusal shown to the user must not carry the secret.
fn redact_secret(error: Pop3Error, forms: &[String]) -> Pop3Error {
    match error {
        Pop3Error::Rejected { command, reply } => Pop3Error::Rejected {
            command,
            reply: auth::mask_secret(&reply, forms),
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
            Ok(Some(listing))
        })
    }

    /// RETR (RFC 1939 §5) of each message in `msgnos`, in order. `on_message` gets the message
    /// number and a reader of its exact bytes (dot-unstuffed, CRLF kept) that ends at the
    /// terminator; what it leaves unread is skipped.
    ///
    /// With PIPELINING (RFC 2449 §6.6) up to `window` RETRs are in flight (and at most
    /// `MAX_IN_FLIGHT_BYTES` of commands); otherwise one at a time.
    ///
    /// Returns the messages the server refused (`-ERR`). If `on_message` fails, the session is
    /// abandoned on the spot: the socket is shut without QUIT, so nothing is deleted, and later
    /// calls return [`Pop3Error::Unusable`].
    pub fn retrieve<E, F>(
        &mut self,
        msgnos: &[u32],
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
        let mut queue = Pipeline::new(msgnos.iter().map(|&n| Command::Retr(n)), window);
        let mut index = 0;
        while queue.fill(conn).map_err(|e| conn.fail(e))? {
            let msgno = msgnos[index];
            index += 1;
            let reply = conn.read_reply().map_err(|e| conn.fail(e))?;
            match reply.status {
                Status::Ok => {
                    let mut body = BodyReader::new(conn, reply.bare_lf);
                    let outcome = on_message(msgno, &mut body);
                    // A transport failure under the callback is the real cause; report it
                    // rather than whatever the callback made of the io::Error it saw.
                    if let Some(e) = body.failed.take() {
                        return Err(conn.fail(e).into());
                    }
                    if let Err(source) = outcome {
                        conn.abandon();
                        return Err(RetrieveError::Callback { msgno, source });
                    }
                    body.drain().map_err(|e| conn.fail(e))?;
                }
                Status::Err => refused.push(Refused { msgno, reply }),
                Status::Continue => {
                    return Err(conn
                        .fail(Pop3Error::protocol("unexpected '+' reply to RETR"))
                        .into());
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

    /// DELE of many messages, pipelined when the server allows. All replies are read before
    /// the first refusal is returned, so the session stays in step.
    pub fn dele_many(&mut self, msgnos: &[u32]) -> Result<()> {
        let window = if self.pipelining() { usize::MAX } else { 1 };
        self.conn.guard(|c| {
            let mut queue = Pipeline::new(msgnos.iter().map(|&n| Command::Dele(n)), window);
            let mut first_refusal = None;
            while queue.fill(c)? {
                let reply = c.read_reply()?;
                match reply.status {
                    Status::Ok => {}
                    Status::Err => {
                        first_refusal.get_or_insert(Pop3Error::Rejected {
                            command: "DELE",
                            reply: reply.to_string(),
                        });
                    }
                    Status::Continue => {
                        return Err(Pop3Error::protocol("unexpected '+' reply to DELE"));
                    }
                }
                queue.answered();
            }
            first_refusal.map_or(Ok(()), Err)
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

/// Keeps up to `window` commands in flight, and never more than [`MAX_IN_FLIGHT_BYTES`] of
/// them (but always at least one).
struct Pipeline<'a> {
    commands: Vec<Command<'a>>,
    next: usize,
    in_flight: VecDeque<usize>,
    bytes: usize,
    window: usize,
}

impl<'a> Pipeline<'a> {
    fn new(commands: impl IntoIterator<Item = Command<'a>>, window: usize) -> Self {
        Pipeline {
            commands: commands.into_iter().collect(),
            next: 0,
            in_flight: VecDeque::new(),
            bytes: 0,
            window: window.max(1),
        }
    }

    /// Sends what fits, in one write. Returns whether a reply is awaited.
    fn fill(&mut self, conn: &mut Conn) -> Result<bool> {
        while self.in_flight.len() < self.window {
            let Some(cmd) = self.commands.get(self.next) else {
                break;
            };
            let before = conn.out.len();
            cmd.encode(&mut conn.out)?;
            let len = conn.out.len() - before;
            if !self.in_flight.is_empty() && self.bytes + len > MAX_IN_FLIGHT_BYTES {
                conn.out.truncate(before);
                break;
            }
            self.next += 1;
            self.in_flight.push_back(len);
            self.bytes += len;
        }
        conn.flush()?;
        Ok(!self.in_flight.is_empty())
    }

    /// The oldest command's reply has been read in full.
    fn answered(&mut self) {
        if let Some(len) = self.in_flight.pop_front() {
            self.bytes -= len;
        }
    }
}

/// The connection and its buffers. Invariant: `buf[start..end]` holds bytes received and not
/// yet parsed; `out` holds encoded commands not yet written.
struct Conn {
    stream: Stream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    unusable: bool,
}

impl Conn {
    fn new(stream: Stream) -> Self {
        Conn {
            stream,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            out: Vec::new(),
            unusable: false,
        }
    }

    fn usable(&self) -> Result<()> {
        if self.unusable {
            Err(Pop3Error::Unusable)
        } else {
            Ok(())
        }
    }

    /// Runs `f` unless the connection is already unusable, and makes it unusable when `f`
    /// fails in a way that loses track of the reply stream.
    fn guard<T>(&mut self, f: impl FnOnce(&mut Conn) -> Result<T>) -> Result<T> {
        self.usable()?;
        f(self).map_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: Pop3Error) -> Pop3Error {
        let in_step = matches!(
            e,
            Pop3Error::Rejected { .. }
                | Pop3Error::InvalidArgument { .. }
                | Pop3Error::MethodUnavailable { .. }
                | Pop3Error::InvalidUid { .. }
                | Pop3Error::Unusable
        );
        if !in_step {
            self.abandon();
        }
        e
    }

    /// Drops the connection without QUIT, so the server never enters UPDATE state.
    fn abandon(&mut self) {
        self.unusable = true;
        self.stream.shutdown();
    }

    fn send(&mut self, cmd: Command) -> Result<()> {
        cmd.encode(&mut self.out)?;
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.stream.flush()?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads more bytes from the socket. Call only when the unparsed bytes are not enough.
    fn fill(&mut self) -> Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        // Cannot fail: parsers give up at STATUS_LINE_LIMIT, well below the buffer size, and
        // the body decoder consumes whatever it is given.
        assert!(self.end < self.buf.len(), "read buffer full");
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(Pop3Error::Closed),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn read_reply(&mut self) -> Result<Reply> {
        loop {
            if let Some((reply, used)) = codec::parse_reply(&self.buf[self.start..self.end])? {
                self.start += used;
                return Ok(reply);
            }
            self.fill()?;
        }
    }

    /// Sends a command and reads its status line; `-ERR` becomes `Rejected` naming the verb.
    fn simple(&mut self, cmd: Command) -> Result<Reply> {
        self.send(cmd)?;
        let reply = self.read_reply()?;
        match reply.status {
            Status::Ok => Ok(reply),
            Status::Err => Err(Pop3Error::Rejected {
                command: cmd.verb(),
                reply: reply.to_string(),
            }),
            Status::Continue => Err(Pop3Error::protocol(format!(
                "unexpected '+' reply to {}",
                cmd.verb()
            ))),
        }
    }

    /// Reads the lines of a multi-line listing up to its terminator (RFC 1939 §3).
    fn read_listing(&mut self, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut lines = 0u64;
        loop {
            // A listing that never ends would otherwise grow until memory runs out.
            if lines > MAX_LISTING_LINES {
                return Err(Pop3Error::protocol(format!(
                    "the server sent a listing of more than {MAX_LISTING_LINES} lines"
                )));
            }
            lines += 1;
            let Some((line, used)) =
                codec::next_line(&self.buf[self.start..self.end], STATUS_LINE_LIMIT)?
            else {
                self.fill()?;
                continue;
            };
            let item = codec::listing_item(line).map(<[u8]>::to_vec);
            self.start += used;
            match item {
                Some(item) => each(&item)?,
                None => return Ok(()),
            }
        }
    }

    /// CAPA (RFC 2449 §5); `None` on `-ERR` (a pre-2449 server).
    fn capa(&mut self) -> Result<Option<Capabilities>> {
        self.send(Command::Capa)?;
        if self.read_reply()?.status != Status::Ok {
            return Ok(None);
        }
        let mut lines = Vec::new();
        self.read_listing(|line| {
            lines.push(String::from_utf8_lossy(line).into_owned());
            Ok(())
        })?;
        Ok(Some(Capabilities::parse(lines.iter().map(String::as_str))))
    }

    /// AUTH (RFC 5034 §4). `responses` answer the server's challenges in order; an initial
    /// response too long for one command line is sent as the first of them instead. When the
    /// responses run out, `on_error` (OAuth error challenges) or `*` (cancel) is sent, and the
    /// final `-ERR` is reported with the decoded challenge.
    fn sasl(
        &mut self,
        mechanism: &'static str,
        initial: Option<&str>,
        responses: Vec<String>,
        on_error: Option<&str>,
    ) -> Result<()> {
        let mut responses = VecDeque::from(responses);
        let initial = match initial {
            Some(ir) if "AUTH ".len() + mechanism.len() + 1 + ir.len() + 2 > MAX_COMMAND_LINE => {
                responses.push_front(ir.to_owned());
                None
            }
            ir => ir,
        };
        self.send(Command::Auth {
            mechanism,
            initial_response: initial,
        })?;
        let mut challenge = None;
        loop {
            let reply = self.read_reply()?;
            match reply.status {
                Status::Ok => return Ok(()),
                Status::Err => {
                    let mut text = reply.to_string();
                    if let Some(detail) = challenge {
                        text = format!("{text} (server said: {detail})");
                    }
                    return Err(Pop3Error::Rejected {
                        command: "AUTH",
                        reply: text,
                    });
                }
                Status::Continue => match responses.pop_front() {
                    Some(next) => self.send(Command::AuthResponse(&next))?,
                    None => {
                        if !reply.text.is_empty() {
                            challenge = Some(auth::decode_challenge(&reply.text));
                        }
                        self.send(Command::AuthResponse(on_error.unwrap_or("*")))?;
                    }
                },
            }
        }
    }
}

/// The body of one multi-line reply, as a reader that ends at the terminator.
struct BodyReader<'c> {
    conn: &'c mut Conn,
    decoder: BodyDecoder,
    /// Decoded bytes in `conn.buf` not yet handed out. While it is non-empty the buffer is not
    /// refilled, so the range stays valid.
    pending: Range<usize>,
    /// The transport error hidden behind the `io::Error` the caller saw
    failed: Option<Pop3Error>,
}

impl<'c> BodyReader<'c> {
    fn new(conn: &'c mut Conn, bare_lf: bool) -> Self {
        BodyReader {
            conn,
            decoder: BodyDecoder::new(bare_lf),
            pending: 0..0,
            failed: None,
        }
    }

    /// Decodes the next run of body bytes into `pending`; false at the end of the body.
    fn advance(&mut self) -> Result<bool> {
        loop {
            if self.decoder.is_done() {
                return Ok(false);
            }
            let input = &self.conn.buf[self.conn.start..self.conn.end];
            let (used, event) = self.decoder.decode(input)?;
            let base = self.conn.start;
            self.conn.start += used;
            match event {
                BodyEvent::Data(r) => {
                    self.pending = base + r.start..base + r.end;
                    return Ok(true);
                }
                BodyEvent::End => return Ok(false),
                BodyEvent::NeedMore => self.conn.fill()?,
            }
        }
    }

    /// Skips what the caller did not read, up to the terminator.
    fn drain(&mut self) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.pending = 0..0;
        while self.advance()? {}
        Ok(())
    }
}

impl Read for BodyReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed.is_some() {
            return Err(io::Error::other("the POP3 connection failed"));
        }
        if out.is_empty() {
            return Ok(0);
        }
        if self.pending.is_empty() {
            match self.advance() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    let kind = match e {
                        Pop3Error::Timeout => io::ErrorKind::TimedOut,
                        Pop3Error::Closed => io::ErrorKind::UnexpectedEof,
                        _ => io::ErrorKind::InvalidData,
                    };
                    let err = io::Error::new(kind, e.to_string());
                    self.failed = Some(e);
                    return Err(err);
                }
            }
        }
        let n = out.len().min(self.pending.len());
        out[..n].copy_from_slice(&self.conn.buf[self.pending.start..self.pending.start + n]);
        self.pending.start += n;
        Ok(n)
    }
}
