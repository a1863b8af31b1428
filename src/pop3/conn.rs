//! One POP3 connection's bytes: the read buffer the codec parses, the commands waiting to be
//! written, the pipeline of commands in flight, and the reader of a multi-line body.
//!
//! Waiting for the server is bounded three ways: `timeout` without a byte is a timeout; a reply
//! that brings fewer than [`STALL_BYTES`] in `timeout` of waiting is a stall (a server trickling
//! a byte every few seconds); and a stop request ends the wait [`STOP_GRACE`] after it is seen.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::time::{Duration, Instant};

use super::codec::{
    self, BodyDecoder, BodyEvent, Capabilities, Command, Reply, STATUS_LINE_LIMIT, Status,
};
use super::{Pop3Error, Result};
use crate::net::sasl;
use crate::net::transport::{ConnectOptions, POLL_INTERVAL, STALL_BYTES, Stream};
use crate::stop::Stop;

/// The most lines a multi-line reply (LIST, UIDL, CAPA) may have: far beyond any real
/// mailbox, and bounded memory against a server that never ends one.
const MAX_LISTING_LINES: u64 = 4_000_000;

/// The most bytes of a multi-line listing: a UIDL listing of 4 million messages is about
/// 160 MiB.
const MAX_LISTING_BYTES: u64 = 256 << 20;

/// The most CAPA lines kept.
const MAX_CAPABILITIES: usize = 1000;

/// Read buffer size. It must exceed [`STATUS_LINE_LIMIT`] so a whole status line always fits.
const READ_BUFFER: usize = 64 * 1024;

/// Most command bytes in flight (sent, not yet answered) when pipelining. The kernel send
/// buffer is far larger, so writing them can never block while the server, itself blocked on
/// writing replies we are not reading yet, has stopped reading: no deadlock.
const MAX_IN_FLIGHT_BYTES: usize = 2048;

/// RFC 2449 §4: a command line is at most 255 octets. Longer AUTH initial responses (OAuth
/// tokens) are sent after an empty challenge instead (RFC 5034 §4).
const MAX_COMMAND_LINE: usize = 255;

/// How long replies already on their way may still arrive after a stop request: what is fully
/// received by then is kept, the rest is fetched by the next run.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The connection and its buffers. Invariant: `buf[start..end]` holds bytes received and not
/// yet parsed; `out` holds encoded commands not yet written.
pub(super) struct Conn {
    pub(super) stream: Stream,
    buf: Box<[u8]>,
    pub(super) start: usize,
    pub(super) end: usize,
    out: Vec<u8>,
    unusable: bool,
    timeout: Duration,
    stop: Stop,
    /// Time spent waiting for the server, and bytes received, since the current reply began
    /// (or since the last full `timeout` of waiting that brought enough bytes).
    waited: Duration,
    received: usize,
    stop_seen: Option<Instant>,
    /// Every form of the secret once one was sent: a server may quote it back in any reply,
    /// so every text from the server is masked with these before anyone sees it.
    secret_forms: Vec<String>,
}

impl Conn {
    pub(super) fn new(stream: Stream, opts: &ConnectOptions) -> io::Result<Self> {
        stream.set_read_timeout(opts.timeout.min(POLL_INTERVAL))?;
        Ok(Conn {
            stream,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            out: Vec::new(),
            unusable: false,
            timeout: opts.timeout,
            stop: opts.stop.clone(),
            waited: Duration::ZERO,
            received: 0,
            stop_seen: None,
            secret_forms: Vec::new(),
        })
    }

    /// From now on, every form of the secret is masked in what the server says.
    pub(super) fn mask_from_now_on(&mut self, forms: Vec<String>) {
        self.secret_forms = forms;
    }

    /// `text` from the server with the secret masked.
    pub(super) fn mask(&self, text: &str) -> String {
        sasl::mask_secret(text, &self.secret_forms)
    }

    fn mask_error(&self, e: Pop3Error) -> Pop3Error {
        if self.secret_forms.is_empty() {
            return e;
        }
        match e {
            Pop3Error::Rejected {
                command,
                reply,
                code,
            } => Pop3Error::Rejected {
                command,
                reply: self.mask(&reply),
                code,
            },
            Pop3Error::Protocol { what } => Pop3Error::Protocol {
                what: self.mask(&what),
            },
            Pop3Error::InvalidUid { msgno, reason } => Pop3Error::InvalidUid {
                msgno,
                reason: self.mask(&reason),
            },
            Pop3Error::MethodUnavailable { method, reason } => Pop3Error::MethodUnavailable {
                method,
                reason: self.mask(&reason),
            },
            other => other,
        }
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(super) fn stop_requested(&self) -> bool {
        self.stop.requested()
    }

    pub(super) fn usable(&self) -> Result<()> {
        if self.unusable {
            Err(Pop3Error::Unusable)
        } else {
            Ok(())
        }
    }

    /// Runs `f` unless the connection is already unusable, and makes it unusable when `f`
    /// fails in a way that loses track of the reply stream.
    pub(super) fn guard<T>(&mut self, f: impl FnOnce(&mut Conn) -> Result<T>) -> Result<T> {
        self.usable()?;
        f(self).map_err(|e| self.fail(e))
    }

    pub(super) fn fail(&mut self, e: Pop3Error) -> Pop3Error {
        let e = self.mask_error(e);
        if matches!(e, Pop3Error::Cancelled) {
            // Stopped with a reply still coming: QUIT goes out anyway (the server reads it after
            // the RETR it is sending; with no DELE it changes nothing), then the socket shuts.
            let _ = self.stream.write_all(b"QUIT\r\n");
            let _ = self.stream.flush();
        }
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
    pub(super) fn abandon(&mut self) {
        self.unusable = true;
        self.stream.shutdown();
    }

    pub(super) fn send(&mut self, cmd: Command) -> Result<()> {
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
            if self.stop.requested() {
                let seen = *self.stop_seen.get_or_insert_with(Instant::now);
                if seen.elapsed() >= STOP_GRACE {
                    return Err(Pop3Error::Cancelled);
                }
            }
            let began = Instant::now();
            let read = self.stream.read(&mut self.buf[self.end..]);
            self.waited += began.elapsed();
            match read {
                Ok(0) => return Err(Pop3Error::Closed),
                Ok(n) => {
                    self.end += n;
                    self.received += n;
                    self.stream.quick_ack();
                    self.check_progress()?;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.check_progress()?
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// After each full `timeout` of waiting: nothing at all is a timeout, a trickle a stall.
    fn check_progress(&mut self) -> Result<()> {
        if self.waited < self.timeout {
            return Ok(());
        }
        match self.received {
            0 => Err(Pop3Error::Timeout),
            n if n < STALL_BYTES => Err(Pop3Error::Stalled {
                min_bytes: STALL_BYTES,
                seconds: self.timeout.as_secs(),
            }),
            _ => {
                self.reply_began();
                Ok(())
            }
        }
    }

    /// A reply was complete: the next one gets its own window of waiting.
    fn reply_began(&mut self) {
        self.waited = Duration::ZERO;
        self.received = 0;
    }

    /// Reads the next status line. Each reply gets its own window of waiting (see
    /// [`Conn::check_progress`]), starting here, so a slow reply never counts against the next.
    pub(super) fn read_reply(&mut self) -> Result<Reply> {
        self.reply_began();
        loop {
            if let Some((mut reply, used)) = codec::parse_reply(&self.buf[self.start..self.end])? {
                self.start += used;
                if !self.secret_forms.is_empty() {
                    reply.text = self.mask(&reply.text);
                }
                return Ok(reply);
            }
            self.fill()?;
        }
    }

    /// Sends a command and reads its status line; `-ERR` becomes `Rejected` naming the verb.
    pub(super) fn simple(&mut self, cmd: Command) -> Result<Reply> {
        self.send(cmd)?;
        let reply = self.read_reply()?;
        match reply.status {
            Status::Ok => Ok(reply),
            Status::Err => Err(rejected(cmd.verb(), reply)),
            Status::Continue => Err(Pop3Error::protocol(format!(
                "unexpected '+' reply to {}",
                cmd.verb()
            ))),
        }
    }

    /// Reads the lines of a multi-line listing up to its terminator (RFC 1939 §3).
    pub(super) fn read_listing(&mut self, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut lines = 0u64;
        let mut bytes = 0u64;
        loop {
            // A listing that never ends would otherwise grow until memory runs out.
            if lines > MAX_LISTING_LINES || bytes > MAX_LISTING_BYTES {
                return Err(Pop3Error::protocol(format!(
                    "the server sent a listing of more than {MAX_LISTING_LINES} lines or {} MiB",
                    MAX_LISTING_BYTES >> 20
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
            bytes += used as u64;
            match item {
                Some(item) => each(&item)?,
                None => return Ok(()),
            }
        }
    }

    /// CAPA (RFC 2449 §5); `None` on `-ERR` (a pre-2449 server).
    pub(super) fn capa(&mut self) -> Result<Option<Capabilities>> {
        self.send(Command::Capa)?;
        if self.read_reply()?.status != Status::Ok {
            return Ok(None);
        }
        let mut lines = Vec::new();
        self.read_listing(|line| {
            // Hundreds of capabilities would be absurd; thousands, hostile.
            if lines.len() < MAX_CAPABILITIES {
                lines.push(String::from_utf8_lossy(line).into_owned());
            }
            Ok(())
        })?;
        let lines: Vec<String> = lines.iter().map(|l| self.mask(l)).collect();
        Ok(Some(Capabilities::parse(lines.iter().map(String::as_str))))
    }

    /// AUTH (RFC 5034 §4). `respond` answers each server challenge (its base64 text) in turn;
    /// an initial response too long for one command line is sent as the answer to the first,
    /// empty, challenge instead. When `respond` has nothing more, `on_error` (OAuth error
    /// challenges) or `*` (cancel) is sent, and the final `-ERR` is reported with the decoded
    /// challenge.
    pub(super) fn sasl(
        &mut self,
        mechanism: &'static str,
        initial: Option<&str>,
        respond: &mut dyn FnMut(&str) -> Option<String>,
        on_error: Option<&str>,
    ) -> Result<()> {
        let mut deferred = None;
        let initial = match initial {
            Some(ir) if "AUTH ".len() + mechanism.len() + 1 + ir.len() + 2 > MAX_COMMAND_LINE => {
                deferred = Some(ir.to_owned());
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
                    let mut refusal = rejected("AUTH", reply);
                    if let (Some(detail), Pop3Error::Rejected { reply, .. }) =
                        (challenge, &mut refusal)
                    {
                        reply.push_str(&format!(" (server said: {detail})"));
                    }
                    return Err(refusal);
                }
                Status::Continue => match deferred.take().or_else(|| respond(&reply.text)) {
                    Some(next) => self.send(Command::AuthResponse(&next))?,
                    None => {
                        if !reply.text.is_empty() {
                            challenge = Some(sasl::decode_challenge(&reply.text));
                        }
                        self.send(Command::AuthResponse(on_error.unwrap_or("*")))?;
                    }
                },
            }
        }
    }
}

/// A `-ERR` reply to `verb`.
pub(super) fn rejected(verb: &'static str, reply: Reply) -> Pop3Error {
    Pop3Error::Rejected {
        command: verb,
        code: reply.code.clone(),
        reply: reply.to_string(),
    }
}

/// Keeps up to `window` commands in flight, and never more than [`MAX_IN_FLIGHT_BYTES`] of
/// them (but always at least one).
pub(super) struct Pipeline<'a> {
    commands: Vec<Command<'a>>,
    next: usize,
    in_flight: VecDeque<usize>,
    bytes: usize,
    window: usize,
}

impl<'a> Pipeline<'a> {
    pub(super) fn new(commands: impl IntoIterator<Item = Command<'a>>, window: usize) -> Self {
        Pipeline {
            commands: commands.into_iter().collect(),
            next: 0,
            in_flight: VecDeque::new(),
            bytes: 0,
            window: window.max(1),
        }
    }

    /// Sends what fits, in one write. Returns whether a reply is awaited.
    pub(super) fn fill(&mut self, conn: &mut Conn) -> Result<bool> {
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

    /// Sends nothing more: only the replies already on their way are awaited.
    pub(super) fn stop_sending(&mut self) {
        self.commands.truncate(self.next);
    }

    /// The oldest command's reply has been read in full.
    pub(super) fn answered(&mut self) {
        if let Some(len) = self.in_flight.pop_front() {
            self.bytes -= len;
        }
    }
}

/// The body of one multi-line reply, as a reader that ends at the terminator.
pub(super) struct BodyReader<'c> {
    conn: &'c mut Conn,
    decoder: BodyDecoder,
    /// Decoded bytes in `conn.buf` not yet handed out. While it is non-empty the buffer is not
    /// refilled, so the range stays valid.
    pending: Range<usize>,
    /// The transport error hidden behind the `io::Error` the caller saw
    pub(super) failed: Option<Pop3Error>,
}

impl<'c> BodyReader<'c> {
    pub(super) fn new(conn: &'c mut Conn, bare_lf: bool) -> Self {
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
            let (used, event) = self.decoder.decode(input);
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
    pub(super) fn drain(&mut self) -> Result<()> {
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
