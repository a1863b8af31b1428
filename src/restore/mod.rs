//! `restore`: puts archived messages back into a Maildir, an mbox file or an IMAP folder.
//!
//! It plans first (which selected messages the destination already holds), then applies: every
//! message is re-hashed against its id before it is written anywhere, a damaged one is reported
//! and skipped, and the rest go on. Re-running the same restore adds nothing; an interrupted one,
//! re-run, completes without duplicates, because presence is read back from the destination.

pub mod imap;
pub mod maildir;
pub mod mbox;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use serde::Serialize;

use crate::archive::local_index::{IndexError, Query};
use crate::archive::select::{Selection, message_time};
use crate::archive::{ArchiveError, Digest, LocalIndex, Location, Message, PackReader, Source};

/// Where `restore --to` writes.
#[derive(Debug, Clone)]
pub enum Destination {
    Maildir(PathBuf),
    Mbox(PathBuf),
    Imap(crate::imap::ImapUrl),
}

impl FromStr for Destination {
    type Err = RestoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("imap://") || s.starts_with("imaps://") {
            return Ok(Destination::Imap(s.parse()?));
        }
        match s.split_once(':') {
            Some(("maildir", p)) if !p.is_empty() => Ok(Destination::Maildir(PathBuf::from(p))),
            Some(("mbox", p)) if !p.is_empty() => Ok(Destination::Mbox(PathBuf::from(p))),
            _ => Err(RestoreError::BadDestination(s.to_string())),
        }
    }
}

impl Destination {
    /// The destination of `folder` (a path with `/` between levels; empty: the top folder)
    /// under this one: a Maildir++ subfolder (`DIR/.Archives.2015`, a `.` in a name becoming
    /// `_`), or an IMAP folder under the URL's (at the top when the URL names INBOX). An mbox
    /// file has no folders.
    pub fn folder(&self, folder: &str) -> Result<Destination, RestoreError> {
        if folder.is_empty() {
            return Ok(self.clone());
        }
        match self {
            Destination::Maildir(root) => Ok(Destination::Maildir(
                root.join(maildir_plus_plus_name(folder)),
            )),
            Destination::Imap(url) => {
                let mut url = url.clone();
                url.folder = if url.folder.is_empty() || url.folder.eq_ignore_ascii_case("INBOX") {
                    folder.to_string()
                } else {
                    format!("{}/{folder}", url.folder)
                };
                Ok(Destination::Imap(url))
            }
            Destination::Mbox(_) => Err(RestoreError::NoFolders),
        }
    }
}

/// The Maildir++ directory of a folder path: `.` then its levels joined by `.`, each in
/// modified UTF-7 (what Dovecot and Courier write for names beyond ASCII), a `.` inside a
/// name becoming `_` (Maildir++ has no way to write one).
pub fn maildir_plus_plus_name(folder: &str) -> String {
    let levels: Vec<String> = folder
        .split('/')
        .map(|level| crate::imap::modified_utf7(&level.replace('.', "_")))
        .collect();
    format!(".{}", levels.join("."))
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Maildir(p) => write!(f, "maildir:{}", p.display()),
            Destination::Mbox(p) => write!(f, "mbox:{}", p.display()),
            Destination::Imap(u) => write!(f, "{u}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("an mbox file has no folders: restore --folders to maildir:DIR or an IMAP URL")]
    NoFolders,
    #[error(
        "{0:?} is not a restore destination: write maildir:DIR, mbox:FILE, imap://USER@HOST[:PORT]/FOLDER or imaps://..."
    )]
    BadDestination(String),
    #[error(transparent)]
    Url(crate::net::url::UrlError),
    #[error("{path} is not an mbox to append to: {why}; give a new file name or an existing mbox")]
    NotAnMbox { path: PathBuf, why: String },
    #[error(
        "{path} is being written by another restore (it is locked); run this one when that is done"
    )]
    Busy { path: PathBuf },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no message to restore: the selection matches none; nothing was written")]
    NothingSelected,
    #[error(transparent)]
    Imap(#[from] crate::imap::ImapError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Not transparent: the CLI finds the index error in the chain, to discard a damaged index.
    #[error("{0}")]
    Index(#[from] IndexError),
}

/// The messages a Maildir or mbox destination held when a restore first looked, by the first
/// 128 bits of their SHA-256, sorted: 16 bytes a message, so that a destination of millions
/// stays small. Two different messages share those bits with odds of about 2^-128 a pair
/// (10^-26 for a million messages against two million), far below any other failure.
#[derive(Debug, Default)]
pub(crate) struct Held(Vec<u128>);

impl Held {
    pub(crate) fn insert(&mut self, id: &Digest) {
        self.0.push(Held::key(id));
    }

    /// Sorts what was inserted, for [`Held::among`].
    pub(crate) fn sorted(mut self) -> Held {
        self.0.sort_unstable();
        self.0.dedup();
        self.0.shrink_to_fit();
        self
    }

    /// The ids of `candidates` held (of a [`Held::sorted`] one).
    pub(crate) fn among(&self, candidates: &[Candidate]) -> HashSet<Digest> {
        candidates
            .iter()
            .map(|c| c.id)
            .filter(|id| self.0.binary_search(&Held::key(id)).is_ok())
            .collect()
    }

    fn key(id: &Digest) -> u128 {
        u128::from_be_bytes(id.0[..16].try_into().expect("16 of 32 bytes"))
    }
}

/// Takes the exclusive lock a restore holds on its destination (`file`, at `path`).
fn lock_destination(file: &std::fs::File, path: &std::path::Path) -> Result<(), RestoreError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(RestoreError::Busy {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(RestoreError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl RestoreError {
    /// Whether this error is about one message only (the destination cannot take it), so the
    /// others may still go.
    pub fn concerns_one_message(&self) -> bool {
        matches!(
            self,
            RestoreError::Imap(crate::imap::ImapError::Unsupported(_))
        )
    }
}

/// IMAP-style flags a restored message gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Flags {
    pub seen: bool,
    pub answered: bool,
    pub flagged: bool,
    pub draft: bool,
}

impl Flags {
    /// From Maildir info letters (`R`, `F`, `D`; others are dropped), plus \Seen unless
    /// `unread` (which leaves every message unread, even one its source had marked seen).
    pub fn new(maildir_letters: Option<&str>, unread: bool) -> Flags {
        let has = |c| maildir_letters.is_some_and(|l| l.contains(c));
        Flags {
            seen: !unread,
            answered: has('R'),
            flagged: has('F'),
            draft: has('D'),
        }
    }

    /// Maildir info letters, in the ASCII order the Maildir spec asks for.
    pub fn maildir_letters(&self) -> String {
        let mut s = String::new();
        for (on, c) in [
            (self.draft, 'D'),
            (self.flagged, 'F'),
            (self.answered, 'R'),
            (self.seen, 'S'),
        ] {
            if on {
                s.push(c);
            }
        }
        s
    }
}

/// A selected message, as the destinations see it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: Digest,
    pub size: u64,
    /// When the message was sent (its Date, else first Received, else first seen).
    pub time: DateTime<Utc>,
    pub flags: Flags,
    pub subject: Option<String>,
    pub from: Option<String>,
    /// Where its bytes are in the archive's packs.
    pub location: Location,
}

impl Candidate {
    /// Reads its bytes, checked against its id (see [`PackReader::read`]).
    pub fn read(&self, packs: &PackReader) -> Result<Vec<u8>, ArchiveError> {
        packs.read(&self.id, &self.location)
    }
}

/// What a destination must do. `put` may buffer; `flush` makes everything put so far durable
/// (Maildir, mbox) or acknowledged by the server (IMAP), and returns the messages the
/// destination refused meanwhile (the rest are in).
pub trait Sink {
    /// The ids among `candidates` the destination already holds. A restore asks once per
    /// batch, with ids no earlier batch had.
    fn present(
        &mut self,
        packs: &PackReader,
        candidates: &[Candidate],
    ) -> Result<HashSet<Digest>, RestoreError>;
    fn put(&mut self, candidate: &Candidate, raw: &[u8]) -> Result<(), RestoreError>;
    /// What the user should know of how messages were put, so far (said once, at the end:
    /// a restore in batches keeps what the last batch gets).
    fn warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Puts several messages, one result each, one after the other; stops after the first
    /// error that is not about one message alone (the destination may be out of step), so there
    /// may be fewer results than items.
    fn put_all(&mut self, items: &[(&Candidate, &[u8])]) -> Vec<Result<(), RestoreError>> {
        let mut results = Vec::with_capacity(items.len());
        for (c, raw) in items {
            let result = self.put(c, raw);
            let fatal = matches!(&result, Err(e) if !e.concerns_one_message());
            results.push(result);
            if fatal {
                break;
            }
        }
        results
    }
    fn flush(&mut self) -> Result<Vec<Skipped>, RestoreError>;
    /// The last flush of a restore: everything put is durable or acknowledged after it.
    fn finish(&mut self) -> Result<Vec<Skipped>, RestoreError> {
        self.flush()
    }
}

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub selection: Selection,
    pub unread: bool,
    pub dry_run: bool,
    /// Stop between chunks: what was put is finished (synced, renamed, appended), the rest is
    /// left for a re-run, which never duplicates.
    pub stop: crate::stop::Stop,
}

/// Progress for the CLI to render.
#[derive(Debug)]
pub enum Event {
    Planned { messages: usize, bytes: u64 },
    Restored { bytes: u64 },
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub id: Digest,
    pub reason: String,
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    pub destination: String,
    pub dry_run: bool,
    pub selected: usize,
    pub already_present: usize,
    /// New messages (to restore, with --dry-run).
    pub new: usize,
    pub restored: usize,
    pub bytes: u64,
    /// Damaged in the archive: left out.
    pub skipped: Vec<Skipped>,
    /// Refused by the destination (an IMAP server that will not take a message): left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Skipped>,
    pub seconds: f64,
    /// Stopped by a stop request before every message was put.
    pub interrupted: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// With --dry-run: the messages that would be restored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlannedMessage>,
}

impl RestoreReport {
    /// Adds what restoring one more folder of the same restore did (its planned messages
    /// named with their folder's destination).
    pub fn absorb(&mut self, mut other: RestoreReport) {
        for planned in &mut other.plan {
            planned.destination = Some(other.destination.clone());
        }
        self.add(other);
    }

    /// Adds what restoring one more batch of the same destination did.
    fn add(&mut self, other: RestoreReport) {
        self.selected += other.selected;
        self.already_present += other.already_present;
        self.new += other.new;
        self.restored += other.restored;
        self.bytes += other.bytes;
        self.skipped.extend(other.skipped);
        self.refused.extend(other.refused);
        self.seconds += other.seconds;
        self.interrupted |= other.interrupted;
        self.warnings.extend(other.warnings);
        self.plan.extend(other.plan);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedMessage {
    pub id: Digest,
    pub size: u64,
    pub date: DateTime<Utc>,
    pub subject: Option<String>,
    /// With `--folders`: where it goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// Messages are read, checked and handed over in chunks of this many bytes (at least one
/// message), so memory stays bounded while all cores decompress and re-hash.
const CHUNK_BYTES: u64 = 16 << 20;

/// A restore reads the selection from the index this many messages at a time (more when the
/// last ones share a date: LF and CRLF copies of one mail, which an IMAP destination must see
/// together), so that its memory does not grow with the archive.
const BATCH_MESSAGES: usize = 20_000;

/// Calls `visit` with the selected messages in restore order (by date, then id), as
/// candidates, until it returns false.
pub fn for_each_candidate(
    index: &LocalIndex,
    query: &Query,
    options: &RestoreOptions,
    visit: &mut dyn FnMut(Candidate, &Message<'_>) -> Result<bool, RestoreError>,
) -> Result<(), RestoreError> {
    let mut failed = None;
    index.for_each(
        &Query {
            newest_first: false,
            ..query.clone()
        },
        &mut |found| {
            let m = found.message();
            if !options.selection.matches(&m) {
                return Ok(true);
            }
            match visit(candidate(&m, found.location.clone(), options), &m) {
                Ok(go_on) => Ok(go_on),
                Err(e) => {
                    failed = Some(e);
                    Ok(false)
                }
            }
        },
    )?;
    failed.map_or(Ok(()), Err)
}

/// Whether the selection holds any message.
pub fn any_selected(
    index: &LocalIndex,
    query: &Query,
    options: &RestoreOptions,
) -> Result<bool, RestoreError> {
    let mut any = false;
    for_each_candidate(index, query, options, &mut |_, _| {
        any = true;
        Ok(false)
    })?;
    Ok(any)
}

fn candidate(m: &Message<'_>, location: Location, options: &RestoreOptions) -> Candidate {
    Candidate {
        id: m.id,
        size: m.size,
        time: message_time(m),
        flags: Flags::new(m.flags, options.unread),
        subject: m.envelope.subject.clone(),
        from: m.envelope.from.clone(),
        location,
    }
}

/// The selected messages by the folder each goes to with `--folders`: every folder a
/// Thunderbird import found it in (`/` between levels; its Inbox, like a message found in no
/// folder, is the top folder, `""`), each in restore order. Accounts are not kept apart: two
/// accounts' `Archives` are one folder.
pub fn candidates_by_folder(
    index: &LocalIndex,
    query: &Query,
    options: &RestoreOptions,
) -> Result<BTreeMap<String, Vec<Candidate>>, RestoreError> {
    let mut by_folder: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for_each_candidate(index, query, options, &mut |c, m| {
        let folders: BTreeSet<&str> = m
            .sources
            .iter()
            .filter_map(|s| match s {
                Source::Thunderbird { folder, .. } if !folder.eq_ignore_ascii_case("inbox") => {
                    Some(folder.as_str())
                }
                _ => None,
            })
            .collect();
        let in_top = folders.is_empty()
            || m.sources.iter().any(
                |s| matches!(s, Source::Thunderbird { folder, .. } if folder.eq_ignore_ascii_case("inbox")),
            );
        for folder in folders {
            by_folder
                .entry(folder.to_string())
                .or_default()
                .push(c.clone());
        }
        if in_top {
            by_folder.entry(String::new()).or_default().push(c);
        }
        Ok(true)
    })?;
    Ok(by_folder)
}

/// Restores the messages `query` and the options' selection pick, read from the index in
/// batches ([`BATCH_MESSAGES`]): memory stays that of a batch whatever the archive holds.
pub fn restore(
    index: &LocalIndex,
    query: &Query,
    packs: &PackReader,
    sink: &mut dyn Sink,
    destination: &Destination,
    options: &RestoreOptions,
    events: &mut dyn FnMut(Event),
) -> Result<RestoreReport, RestoreError> {
    let batches = Batches {
        index,
        query,
        messages: BATCH_MESSAGES,
    };
    restore_in_batches(batches, packs, sink, destination, options, events)
}

/// Where [`restore`] reads its batches from.
struct Batches<'a> {
    index: &'a LocalIndex,
    query: &'a Query,
    messages: usize,
}

fn restore_in_batches(
    Batches {
        index,
        query,
        messages: batch_messages,
    }: Batches<'_>,
    packs: &PackReader,
    sink: &mut dyn Sink,
    destination: &Destination,
    options: &RestoreOptions,
    events: &mut dyn FnMut(Event),
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let mut report = RestoreReport {
        destination: destination.to_string(),
        dry_run: options.dry_run,
        ..RestoreReport::default()
    };
    let mut batch: Vec<Candidate> = Vec::new();
    let mut restore_batch = |batch: &mut Vec<Candidate>, report: &mut RestoreReport| {
        let done = restore_candidates(packs, sink, destination, batch, options, events)?;
        batch.clear();
        let interrupted = done.interrupted;
        // The sink's warnings are about the whole restore so far.
        report.warnings.clear();
        report.add(done);
        Ok::<bool, RestoreError>(!interrupted)
    };
    let mut go_on = true;
    for_each_candidate(index, query, options, &mut |c, _| {
        if batch.len() >= batch_messages && batch.last().is_some_and(|last| last.time != c.time) {
            go_on = restore_batch(&mut batch, &mut report)?;
        }
        batch.push(c);
        Ok(go_on)
    })?;
    if go_on && !batch.is_empty() {
        restore_batch(&mut batch, &mut report)?;
    }
    if report.selected == 0 {
        return Err(RestoreError::NothingSelected);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Restores `all` (in this order), as [`restore`] does the selected messages; `options`'
/// selection is not looked at.
pub fn restore_candidates(
    packs: &PackReader,
    sink: &mut dyn Sink,
    destination: &Destination,
    all: &[Candidate],
    options: &RestoreOptions,
    events: &mut dyn FnMut(Event),
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let present = sink.present(packs, all)?;
    let new: Vec<&Candidate> = all.iter().filter(|c| !present.contains(&c.id)).collect();
    let mut report = RestoreReport {
        destination: destination.to_string(),
        dry_run: options.dry_run,
        selected: all.len(),
        already_present: all.len() - new.len(),
        new: new.len(),
        ..RestoreReport::default()
    };
    events(Event::Planned {
        messages: new.len(),
        bytes: new.iter().map(|c| c.size).fold(0, u64::saturating_add),
    });
    if options.dry_run {
        report.plan = new
            .iter()
            .map(|c| PlannedMessage {
                id: c.id,
                size: c.size,
                date: c.time,
                subject: c.subject.clone(),
                destination: None,
            })
            .collect();
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // Reading (decompress and re-hash, on all cores) runs at most one chunk ahead of the sink
    // (a rendezvous channel), so the CPU work overlaps the destination's writes or round trips
    // and at most three chunks are in memory. The sink stays on this thread.
    let chunks = chunks_of(&new, CHUNK_BYTES);
    std::thread::scope(|scope| -> Result<(), RestoreError> {
        let (read_tx, read_rx) = std::sync::mpsc::sync_channel(0);
        scope.spawn(move || {
            for chunk in chunks {
                let read: Vec<Result<Vec<u8>, ArchiveError>> =
                    chunk.par_iter().map(|c| c.read(packs)).collect();
                // A closed channel means the sink failed and the restore is over.
                if read_tx.send((chunk, read)).is_err() {
                    break;
                }
            }
        });
        for (chunk, read) in read_rx {
            if options.stop.requested() {
                report.interrupted = true;
                break;
            }
            put_chunk(sink, chunk, read, &mut report, events)?;
        }
        Ok(())
    })?;
    refused(&mut report, sink.finish()?);
    report.warnings = sink.warnings();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Splits `messages` into runs of at most `max_bytes` (and at least one message each).
fn chunks_of<'a>(messages: &'a [&'a Candidate], max_bytes: u64) -> Vec<&'a [&'a Candidate]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < messages.len() {
        let mut end = start + 1;
        let mut bytes = messages[start].size;
        while end < messages.len() && bytes.saturating_add(messages[end].size) <= max_bytes {
            bytes += messages[end].size;
            end += 1;
        }
        chunks.push(&messages[start..end]);
        start = end;
    }
    chunks
}

/// Hands one chunk of read messages to the sink and records the outcome of each.
fn put_chunk(
    sink: &mut dyn Sink,
    chunk: &[&Candidate],
    read: Vec<Result<Vec<u8>, ArchiveError>>,
    report: &mut RestoreReport,
    events: &mut dyn FnMut(Event),
) -> Result<(), RestoreError> {
    let mut readable: Vec<(&Candidate, Vec<u8>)> = Vec::with_capacity(chunk.len());
    for (candidate, raw) in chunk.iter().zip(read) {
        match raw {
            Ok(raw) => readable.push((candidate, raw)),
            Err(e @ ArchiveError::DamagedMessage { .. }) => report.skipped.push(Skipped {
                id: candidate.id,
                reason: e.to_string(),
                subject: candidate.subject.clone(),
            }),
            Err(e) => return Err(e.into()),
        }
    }
    let items: Vec<(&Candidate, &[u8])> = readable
        .iter()
        .map(|(c, raw)| (*c, raw.as_slice()))
        .collect();
    for ((candidate, raw), outcome) in items.iter().zip(sink.put_all(&items)) {
        match outcome {
            Ok(()) => {
                report.restored += 1;
                report.bytes += raw.len() as u64;
                events(Event::Restored {
                    bytes: raw.len() as u64,
                });
            }
            // This message cannot go to this destination; the others still can.
            Err(e) if e.concerns_one_message() => report.refused.push(Skipped {
                id: candidate.id,
                reason: e.to_string(),
                subject: candidate.subject.clone(),
            }),
            Err(e) => return Err(e),
        }
    }
    refused(report, sink.flush()?);
    Ok(())
}

fn refused(report: &mut RestoreReport, refused: Vec<Skipped>) {
    report.restored = report.restored.saturating_sub(refused.len());
    report.refused.extend(refused);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_between_maildir_letters_and_imap() {
        let f = Flags::new(Some("RF"), false);
        assert_eq!(
            f,
            Flags {
                seen: true,
                answered: true,
                flagged: true,
                draft: false
            }
        );
        assert_eq!(f.maildir_letters(), "FRS");
        assert_eq!(Flags::new(None, true).maildir_letters(), "");
        assert_eq!(Flags::new(Some("S"), true).maildir_letters(), "");
    }

    #[test]
    fn destinations_parse() {
        assert!(matches!(
            "maildir:/x".parse::<Destination>(),
            Ok(Destination::Maildir(_))
        ));
        assert!(matches!(
            "mbox:out.mbox".parse::<Destination>(),
            Ok(Destination::Mbox(_))
        ));
        assert!("pop3://x".parse::<Destination>().is_err());
        assert!("maildir:".parse::<Destination>().is_err());
    }

    /// An archive of `count` messages, dated on only a few days (so that many share a date, as
    /// a batch boundary must not split), with the ids of each.
    fn archive_of(root: &std::path::Path, count: usize) -> Vec<Digest> {
        let mut writer = crate::archive::Writer::open(root, "test", None).unwrap();
        let batch: Vec<crate::archive::Incoming> = (0..count)
            .map(|i| crate::archive::Incoming {
                raw: format!(
                    "Date: Mon, {} Jan 2024 10:00:00 +0000\r\nFrom: a{i}@example.org\r\nSubject: m{i}\r\n\r\nbody {i}\r\n",
                    1 + i % 4
                )
                .into_bytes(),
                source: Source::Eml {
                    path: format!("/m/{i}.eml"),
                },
                flags: (i % 3 == 0).then(|| "F".to_string()),
                first_seen: Utc::now(),
            })
            .collect();
        let ids = batch.iter().map(|m| Digest::of(&m.raw)).collect();
        writer.add_batch(batch).unwrap();
        writer.finish().unwrap();
        ids
    }

    #[test]
    fn a_restore_in_batches_puts_what_one_batch_would_once_and_a_rerun_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        let ids = archive_of(&root, 23);
        let (index, _) = LocalIndex::in_memory(&root, &mut |_, _| {}).unwrap();
        let packs = PackReader::new(&root);
        let restore = |sink: &mut dyn Sink, destination: &Destination, batch: usize| {
            let batches = Batches {
                index: &index,
                query: &Query::default(),
                messages: batch,
            };
            let options = RestoreOptions::default();
            restore_in_batches(batches, &packs, sink, destination, &options, &mut |_| {}).unwrap()
        };
        let restore_to = |file: &str, batch: usize| {
            let path = dir.path().join(file);
            let mut sink = mbox::MboxSink::open(&path, false).unwrap();
            (
                restore(&mut sink, &Destination::Mbox(path.clone()), batch),
                path,
            )
        };
        let (whole, one_batch) = restore_to("whole.mbox", usize::MAX);
        assert_eq!((whole.selected, whole.restored), (23, 23));
        let (batched, in_batches) = restore_to("batched.mbox", 2);
        assert_eq!((batched.selected, batched.restored), (23, 23));
        assert_eq!(batched.already_present, 0);
        assert_eq!(
            std::fs::read(&one_batch).unwrap(),
            std::fs::read(&in_batches).unwrap()
        );
        let (again, _) = restore_to("batched.mbox", 2);
        assert_eq!(
            (again.selected, again.already_present, again.restored),
            (23, 23, 0)
        );

        let mut read_back = crate::import::mbox::MboxReader::new(
            std::io::BufReader::new(std::fs::File::open(&in_batches).unwrap()),
            true,
        );
        let mut found = Vec::new();
        while let Some(m) = read_back.next_message().unwrap() {
            found.push(Digest::of(&m.bytes));
        }
        found.sort();
        let mut ids = ids;
        ids.sort();
        assert_eq!(found, ids);

        // A Maildir, in batches of 2, twice: every message once.
        let maildir = dir.path().join("Maildir");
        for round in 0..2 {
            let mut sink = maildir::MaildirSink::open(&maildir, false).unwrap();
            let report = restore(&mut sink, &Destination::Maildir(maildir.clone()), 2);
            assert_eq!(report.restored, if round == 0 { 23 } else { 0 });
        }
        let mut in_maildir: Vec<Digest> = std::fs::read_dir(maildir.join("cur"))
            .unwrap()
            .map(|e| Digest::of(&std::fs::read(e.unwrap().path()).unwrap()))
            .collect();
        in_maildir.sort();
        assert_eq!(in_maildir, ids);
    }
}
