//! Restore into an IMAP folder, through our client ([`crate::imap`]).
//!
//! Bytes: IMAP requires CRLF line ends, so a bare LF is sent as CRLF; every other byte goes as
//! it is, a lone CR included (raw binary parts have them). NUL bytes have no room in a plain
//! literal (RFC 3501): where the server offers BINARY (RFC 3516) a message holding NUL goes as
//! a `literal8`, which Dovecot stores byte for byte; elsewhere it goes as it is (Dovecot keeps
//! it, showing NUL as 0x80), and the report says how many messages held NULs.
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
use std::io::Write;

use chrono::{DateTime, Utc};

use super::{Candidate, RestoreError, Sink, Skipped};
use crate::archive::envelope::header_block;
use crate::archive::{Digest, PackReader};
use crate::imap::{
    Client, ImapAuth, ImapError, ImapUrl, Response, capabilities, complete, mailbox_name,
    read_response,
};
use crate::net::Secret;
use crate::net::sasl;
use crate::net::transport::ConnectOptions;
/// APPENDs in flight with LITERAL+.
const WINDOW: usize = 128;

/// A folder's messages as presence sees them (see [`Client::folder_view`]): by presence key,
/// and by [`header_identity`].
#[derive(Debug, Default)]
struct FolderView {
    by_key: HashMap<(u64, Digest), Vec<u64>>,
    by_header: HashMap<Digest, Vec<u64>>,
}

/// What presence reads of the selected folder.
impl Client {
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
    // The decoder gives the same responses however the bytes arrive.
    let piece = input.first().map_or(1, |&b| usize::from(b % 16) + 1);
    crate::imap::assert_split_alike(input, piece);
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
    /// The folder as it was when presence first looked: read once for all the batches of a
    /// restore (each asks of ids no other batch has, and none this restore appended).
    view: Option<FolderView>,
    /// The normalised digests of what this restore decided to send: a later copy of the
    /// same mail (its LF twin, in a later batch) is then present, as within one batch.
    going: HashSet<Digest>,
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
            view: None,
            going: HashSet::new(),
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

impl ImapSink {
    /// The ids among `candidates` the folder `view` shows (see [`Sink::present`]).
    fn present_in(
        &mut self,
        view: &FolderView,
        packs: &PackReader,
        candidates: &[Candidate],
    ) -> Result<HashSet<Digest>, RestoreError> {
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
            let raw = match c.read(packs) {
                Ok(raw) => raw,
                // Reported and skipped when the restore reads it again.
                Err(crate::archive::ArchiveError::DamagedMessage { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            archived.insert(c.id, Archived::of(&crlf_normalise(&raw)));
        }
        let held = self.held(view, archived.values())?;
        // Present: what the server holds already, and every later twin of a message that will
        // be restored (the first, oldest, goes; the server then holds it once).
        let mut present = HashSet::new();
        for c in candidates {
            let Some(a) = archived.get(&c.id) else {
                continue;
            };
            if held.contains(&a.whole) || !self.going.insert(a.whole) {
                present.insert(c.id);
            }
        }
        Ok(present)
    }
}

impl Sink for ImapSink {
    fn present(
        &mut self,
        packs: &PackReader,
        candidates: &[Candidate],
    ) -> Result<HashSet<Digest>, RestoreError> {
        let view = match self.view.take() {
            Some(view) => view,
            None => {
                // Even an empty folder: a killed run's first APPENDs may not have landed yet.
                let exists = self.client.examine_or_create(&self.folder, !self.dry_run)?;
                let exists = self.client.settle(exists)?;
                self.client.folder_view(exists)?
            }
        };
        let found = self.present_in(&view, packs, candidates);
        self.view = Some(view);
        found
    }

    fn warnings(&mut self) -> Vec<String> {
        match self.nul_messages {
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
