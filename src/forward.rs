//! `forward`: every new POP3 message of an account delivered to an IMAP folder exactly once.
//!
//! The archive is the queue. A backup pass puts new mail in the archive; a delivery pass sends
//! every message of the account archived since the first forward to that destination and not
//! yet delivered there. Either pass can fail alone: mail archived while the IMAP server is down
//! is delivered by a later pass.
//!
//! Exactly once rests on a journal per account and destination, `forward/<key>.jsonl` in the
//! archive (doc/FORMAT.md), appended and fsynced around every APPEND:
//! - `sending` is written before a message leaves, `delivered` once the server acknowledged it,
//!   `refused` when the server said NO (it stays pending and is tried again next pass);
//! - a message left `sending` (a kill mid-delivery) is looked for on the server, by size and
//!   header block as `restore` does, before it is sent again;
//! - a message never marked `sending` was never sent, so nothing else is looked up: a pass with
//!   nothing new makes no IMAP connection, and one with new mail reads nothing from the folder.
//!
//! A torn last line (a crash while it was written: no line end yet) is cut away: a torn
//! `sending` line was not yet acted on, a torn `delivered` leaves its messages `sending`, so
//! they are looked for.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::local_index::{IndexError, Query};
use crate::archive::{ArchiveError, Digest, LocalIndex, Message, PackReader, Source};
use crate::restore::imap::ImapSink;
use crate::restore::{
    self, Candidate, Destination, Event, Flags, RestoreError, RestoreOptions, Sink, Skipped,
};
use crate::stop::Stop;

pub const JOURNAL_DIR: &str = "forward";

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot use the forward journal {path}")]
    Journal {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the forward journal {path} is damaged at line {line}: delivery to this destination stops rather than risk sending mail twice; to start it afresh, move the file away (the next forward then delivers mail archived from that moment, or from --since DATE)"
    )]
    Damaged { path: PathBuf, line: usize },
    #[error(
        "another popvault is forwarding to {destination} (its journal {path} is locked); run one at a time"
    )]
    Busy { destination: String, path: PathBuf },
    #[error(
        "account {account}'s deliveries to {destination} moved to {to} (forward --renamed-from, {at}); to forward there again, run `popvault forward --renamed-from {to}` with forward_to = \"{destination}\""
    )]
    Renamed {
        account: String,
        destination: String,
        to: String,
        at: DateTime<Utc>,
    },
    #[error(
        "account {account} never forwarded to {destination} (no journal of it; `popvault status` lists the destinations forwarded to)"
    )]
    NoJournal {
        account: String,
        destination: String,
    },
    #[error(
        "account {account}'s deliveries to {from} already moved to {to} on {at}: run `popvault forward --renamed-from {to}` instead"
    )]
    RenamedAway {
        account: String,
        from: String,
        to: String,
        at: DateTime<Utc>,
    },
    #[error(
        "account {account}'s deliveries to {destination} moved to {moved_to} on {at}, and {from} does not hold them: move them back first (`popvault forward --renamed-from {moved_to}` with forward_to = \"{destination}\"), then run this again"
    )]
    RenamedElsewhere {
        account: String,
        destination: String,
        moved_to: String,
        at: DateTime<Utc>,
        from: String,
    },
    #[error("no IMAP login: {0}")]
    Password(String),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Not transparent: the CLI finds the index error in the chain, to discard a damaged index.
    #[error("{0}")]
    Index(#[from] IndexError),
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    /// The first line: what this journal is for, and from when mail counts as new.
    Start {
        account: String,
        destination: String,
        since: DateTime<Utc>,
    },
    Sending {
        ids: Vec<Digest>,
    },
    Delivered {
        ids: Vec<Digest>,
        at: DateTime<Utc>,
    },
    Refused {
        ids: Vec<Digest>,
    },
    /// The last line of a journal whose deliveries moved to the journal of `to` (the same
    /// mailbox under another URL): nothing is delivered through this one any more.
    Renamed {
        to: String,
        at: DateTime<Utc>,
    },
}

/// What a journal says of one account and one destination.
#[derive(Debug, Clone)]
pub struct Deliveries {
    pub account: String,
    pub destination: String,
    /// Messages of the account first archived at or after this are delivered.
    pub since: DateTime<Utc>,
    pub delivered: HashSet<Digest>,
    /// Sent, not acknowledged: looked for on the server before being sent again.
    pub in_flight: HashSet<Digest>,
    pub last_delivery: Option<DateTime<Utc>>,
    /// How many passes the server refused each undelivered message.
    pub refusals: HashMap<Digest, u32>,
    /// Where its deliveries moved, and when (see [`rename`]).
    pub renamed: Option<(String, DateTime<Utc>)>,
}

/// After this many refusals a message is not sent again by itself (`--retry-refused` does):
/// a message the server will never take (too large, say) must not be uploaded every pass.
pub const GIVE_UP_AFTER: u32 = 3;

impl Deliveries {
    fn new(account: &str, destination: &str, since: DateTime<Utc>) -> Deliveries {
        Deliveries {
            account: account.into(),
            destination: destination.into(),
            since,
            delivered: HashSet::new(),
            in_flight: HashSet::new(),
            last_delivery: None,
            refusals: HashMap::new(),
            renamed: None,
        }
    }

    /// Whether the server refused `id` so often that it is no longer sent by itself.
    pub fn given_up(&self, id: &Digest) -> bool {
        self.refusals.get(id).is_some_and(|&n| n >= GIVE_UP_AFTER)
    }

    fn apply(&mut self, line: Line) {
        match line {
            Line::Start {
                account,
                destination,
                since,
            } => {
                self.account = account;
                self.destination = destination;
                self.since = since;
                self.renamed = None;
            }
            Line::Sending { ids } => self.in_flight.extend(ids),
            Line::Delivered { ids, at } => {
                for id in ids {
                    self.in_flight.remove(&id);
                    self.refusals.remove(&id);
                    self.delivered.insert(id);
                }
                self.last_delivery = Some(at);
            }
            Line::Refused { ids } => {
                for id in ids {
                    self.in_flight.remove(&id);
                    *self.refusals.entry(id).or_default() += 1;
                }
            }
            Line::Renamed { to, at } => self.renamed = Some((to, at)),
        }
    }

    /// The state the journal at `path` records.
    fn read(path: &Path) -> Result<Deliveries, ForwardError> {
        let mut state = Deliveries::new("", "", Utc::now());
        let (lines, _) = parse_lines(path, &read_journal(path)?)?;
        for line in lines {
            state.apply(line);
        }
        Ok(state)
    }

    /// What a journal of `account` and `destination` would say now, without making or locking
    /// it (a dry run, or a destination never forwarded to: `since` or now is its start).
    pub fn peek(
        root: &Path,
        account: &str,
        destination: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Deliveries, ForwardError> {
        let path = journal_path(root, account, destination);
        let state = match path.exists() {
            true => Deliveries::read(&path)?,
            false => Deliveries::new("", "", Utc::now()),
        };
        // A journal without its start line (made, then a crash) starts afresh, as `open` does.
        Ok(match state.account.is_empty() {
            true => Deliveries::new(account, destination, since.unwrap_or_else(Utc::now)),
            false => state.moved_back_to(since),
        })
    }

    /// This state with its start moved back to `since` when that is earlier, as a forward
    /// with `--since` records it.
    pub fn moved_back_to(mut self, since: Option<DateTime<Utc>>) -> Deliveries {
        if let Some(since) = since
            && since < self.since
        {
            self.since = since;
        }
        self
    }
}

/// The journal of one account and one destination, open for delivery.
pub struct Journal {
    path: PathBuf,
    /// Append-only, locked for the life of this value.
    file: File,
    pub state: Deliveries,
}

/// How journals name the destination `forward_to`: the URL as popvault prints it (None when it
/// is not an IMAP URL).
pub fn destination_label(forward_to: &str) -> Option<String> {
    forward_to
        .parse::<crate::imap::ImapUrl>()
        .ok()
        .map(|url| url.to_string())
}

/// The journal's file name: a digest of account and destination (both may hold any character).
fn journal_path(root: &Path, account: &str, destination: &str) -> PathBuf {
    let key = Digest::of(format!("{account}\n{destination}").as_bytes());
    root.join(JOURNAL_DIR)
        .join(format!("{}.jsonl", &key.hex()[..16]))
}

impl Journal {
    /// Opens and locks the journal of `account` and `destination` in the archive at `root`.
    /// A new one starts at `since_asked`, else `start`; an existing one later than
    /// `since_asked` is moved back to it.
    pub fn open(
        root: &Path,
        account: &str,
        destination: &str,
        start: DateTime<Utc>,
        since_asked: Option<DateTime<Utc>>,
    ) -> Result<Journal, ForwardError> {
        let path = journal_path(root, account, destination);
        let io_err = |source| ForwardError::Journal {
            path: path.clone(),
            source,
        };
        let dir = root.join(JOURNAL_DIR);
        let file = lock_journal(&path, destination)?;
        // A line torn by a crash is cut away, so the next one does not join it.
        let bytes = read_journal(&path)?;
        let (lines, whole) = parse_lines(&path, &bytes)?;
        if whole < bytes.len() as u64 {
            file.set_len(whole)
                .and_then(|()| file.sync_data())
                .map_err(io_err)?;
        }
        let mut journal = Journal {
            path: path.clone(),
            file,
            state: Deliveries::new(account, destination, since_asked.unwrap_or(start)),
        };
        if lines.is_empty() {
            journal.append(&Line::Start {
                account: account.into(),
                destination: destination.into(),
                since: journal.state.since,
            })?;
            crate::archive::durable::sync_dir(&dir).map_err(io_err)?;
        }
        for line in lines {
            journal.state.apply(line);
        }
        if let Some((_, at)) = journal.state.renamed.clone() {
            return Err(ForwardError::Renamed {
                account: account.into(),
                destination: destination.into(),
                to: moves_end(root, account, destination),
                at,
            });
        }
        // An earlier --since on a later run moves the start back: that older mail goes too.
        if let Some(since) = since_asked
            && since < journal.state.since
        {
            journal.record(Line::Start {
                account: account.into(),
                destination: destination.into(),
                since,
            })?;
        }
        Ok(journal)
    }

    /// Appends `line` and makes it durable before returning.
    fn append(&mut self, line: &Line) -> Result<(), ForwardError> {
        let mut text = serde_json::to_vec(line).expect("journal lines serialize");
        text.push(b'\n');
        self.file
            .write_all(&text)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| ForwardError::Journal {
                path: self.path.clone(),
                source,
            })
    }

    fn record(&mut self, line: Line) -> Result<(), ForwardError> {
        self.append(&line)?;
        self.state.apply(line);
        Ok(())
    }
}

/// Opens (making it if need be) and locks the journal at `path`, the one at that path once
/// locked: [`rename`] may replace a journal while another process is opening it.
fn lock_journal(path: &Path, destination: &str) -> Result<File, ForwardError> {
    use std::os::unix::fs::MetadataExt;
    let io_err = |source| ForwardError::Journal {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err)?;
    }
    loop {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(ForwardError::Busy {
                    destination: destination.into(),
                    path: path.into(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        let locked = file.metadata().map_err(io_err)?;
        match fs::metadata(path) {
            Ok(now) if (now.dev(), now.ino()) == (locked.dev(), locked.ino()) => return Ok(file),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
}

/// Moves `account`'s deliveries to `from` over to `to`, the same mailbox under another URL (a
/// new host name, port, user spelling or folder path), so that nothing delivered through
/// `from` is sent again through `to`. `to`'s journal becomes `from`'s lines, a `start` line
/// naming `to` from the earlier of both starts, then `to`'s own lines (a forward that already
/// ran with the new URL: both sets of deliveries count); it replaces the old file in one
/// rename. `from`'s journal then ends with a `renamed` line, and is never delivered through
/// again. Both journals are locked throughout. Run again, it changes nothing; run again after
/// a crash at any point, it finishes (a `to` journal that already starts with `from`'s lines
/// is not copied again). With `dry_run` nothing is locked or written.
/// Returns the state of `to`'s journal after the move.
pub fn rename(
    root: &Path,
    account: &str,
    from: &str,
    to: &str,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Deliveries, ForwardError> {
    let from_path = journal_path(root, account, from);
    let to_path = journal_path(root, account, to);
    if !from_path.exists() {
        return Err(ForwardError::NoJournal {
            account: account.into(),
            destination: from.into(),
        });
    }
    let read_state = |lines: Vec<Line>| {
        let mut state = Deliveries::new(account, to, now);
        for line in lines {
            state.apply(line);
        }
        state
    };
    let read_to = || -> Result<Vec<u8>, ForwardError> {
        match to_path.exists() {
            true => read_journal(&to_path),
            false => Ok(Vec::new()),
        }
    };
    // `from` is locked and judged before `to` is locked: locking makes the file, and a move
    // refused must leave no empty journal behind.
    let old_file = match dry_run {
        true => None,
        false => Some(lock_journal(&from_path, from)?),
    };
    let old_bytes = read_journal(&from_path)?;
    let (old_lines, old_whole) = parse_lines(&from_path, &old_bytes)?;
    let old_bytes = &old_bytes[..old_whole as usize];
    let mut old = Deliveries::new(account, from, now);
    for line in old_lines {
        old.apply(line);
    }
    if let Some((moved_to, at)) = &old.renamed {
        // Done before (a second run, or one after a crash past the last step), or `to` is
        // where a chain of moves from `from` ended: the deliveries are there already.
        let end = moves_end(root, account, from);
        if moved_to == to || end == to {
            return Ok(read_state(parse_lines(&to_path, &read_to()?)?.0));
        }
        return Err(ForwardError::RenamedAway {
            account: account.into(),
            from: from.into(),
            to: end,
            at: *at,
        });
    }
    let locks = match old_file {
        Some(old_file) => Some((old_file, lock_journal(&to_path, to)?)),
        None => None,
    };
    let new_bytes = read_to()?;
    let (new_lines, _) = parse_lines(&to_path, &new_bytes)?;
    // Copied before a crash, `from` not yet marked: only the mark is left to write.
    let copied = !old_bytes.is_empty() && new_bytes.starts_with(old_bytes);
    let mut text = None;
    let joined = if copied {
        read_state(new_lines)
    } else {
        let mut since = old.since;
        let mut rest = Vec::new();
        for line in new_lines {
            match line {
                Line::Start { since: theirs, .. } => since = since.min(theirs),
                // `to` was renamed before, and its deliveries went on in the journal it moved
                // to. When that chain of moves ends in `from`, `from` began as a copy of these
                // lines: they are in it already. Otherwise `from` lacks them.
                Line::Renamed { to: moved_to, at } => {
                    if !moves_reach(root, account, &moved_to, from) {
                        return Err(ForwardError::RenamedElsewhere {
                            account: account.into(),
                            destination: to.into(),
                            moved_to,
                            at,
                            from: from.into(),
                        });
                    }
                    rest.clear();
                }
                line => rest.push(line),
            }
        }
        let start = Line::Start {
            account: account.into(),
            destination: to.into(),
            since,
        };
        let mut bytes = old_bytes.to_vec();
        for line in std::iter::once(&start).chain(&rest) {
            bytes.extend(serde_json::to_vec(line).expect("journal lines serialize"));
            bytes.push(b'\n');
        }
        let state = read_state(parse_lines(&to_path, &bytes)?.0);
        text = Some(bytes);
        state
    };
    let Some((old_file, new_file)) = locks else {
        return Ok(joined);
    };
    if let Some(text) = text {
        let scratch = to_path.with_extension("jsonl.tmp");
        let io_err = |source| ForwardError::Journal {
            path: scratch.clone(),
            source,
        };
        let mut file = File::create(&scratch).map_err(io_err)?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(io_err)?;
        fs::rename(&scratch, &to_path).map_err(io_err)?;
        crate::archive::durable::sync_dir(&root.join(JOURNAL_DIR)).map_err(io_err)?;
    }
    drop(new_file);
    // A line torn by a crash is cut away first, so that the mark is a line of its own.
    let mut old_journal = Journal {
        file: old_file,
        path: from_path.clone(),
        state: old,
    };
    if old_whole < old_journal.file.metadata().map_or(0, |m| m.len()) {
        old_journal
            .file
            .set_len(old_whole)
            .and_then(|()| old_journal.file.sync_data())
            .map_err(|source| ForwardError::Journal {
                path: from_path.clone(),
                source,
            })?;
    }
    old_journal.record(Line::Renamed {
        to: to.into(),
        at: now,
    })?;
    Ok(joined)
}

/// Where the moves recorded from `start` on (each journal's `renamed` line) end: the URL whose
/// journal holds the deliveries now. Bounded: a loop of moves ends the walk.
fn moves_end(root: &Path, account: &str, start: &str) -> String {
    let mut at = start.to_string();
    for _ in 0..64 {
        match Deliveries::read(&journal_path(root, account, &at)).map(|s| s.renamed) {
            Ok(Some((next, _))) => at = next,
            _ => break,
        }
    }
    at
}

/// Whether the moves recorded from `start` on lead to `target`.
fn moves_reach(root: &Path, account: &str, start: &str, target: &str) -> bool {
    let mut at = start.to_string();
    for _ in 0..64 {
        if at == target {
            return true;
        }
        match Deliveries::read(&journal_path(root, account, &at)).map(|s| s.renamed) {
            Ok(Some((next, _))) => at = next,
            _ => return false,
        }
    }
    false
}

/// The journal's whole lines and the bytes they take. What follows the last line end was torn
/// by a crash: a line is acted on only once it is synced whole, with its line end, so it is
/// left out. A whole line that does not parse is damage.
fn parse_lines(path: &Path, bytes: &[u8]) -> Result<(Vec<Line>, u64), ForwardError> {
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut lines = Vec::new();
    for (n, text) in bytes[..whole].split_inclusive(|&b| b == b'\n').enumerate() {
        let line =
            serde_json::from_slice(&text[..text.len() - 1]).map_err(|_| ForwardError::Damaged {
                path: path.into(),
                line: n + 1,
            })?;
        lines.push(line);
    }
    Ok((lines, whole as u64))
}

/// The bytes of the journal at `path`.
fn read_journal(path: &Path) -> Result<Vec<u8>, ForwardError> {
    fs::read(path).map_err(|source| ForwardError::Journal {
        path: path.into(),
        source,
    })
}

/// Whether `m` came from the POP3 account `account`.
fn from_account(m: &Message<'_>, account: &str) -> bool {
    m.sources
        .iter()
        .any(|s| matches!(s, Source::Pop3 { account: a, .. } if a == account))
}

/// A message still to deliver.
pub struct Pending {
    /// When it was first archived: what the journal's start and `status`'s oldest pending
    /// mail are measured by.
    pub first_seen: DateTime<Utc>,
    pub candidate: Candidate,
}

/// The messages of the journal's account still to deliver, in arrival order, as new mail (no
/// flags), dated by the rules of restore. Read from the local index: memory is that of the
/// pending mail, not of the archive.
pub fn pending(index: &LocalIndex, journal: &Deliveries) -> Result<Vec<Pending>, ForwardError> {
    let query = Query {
        labels: vec![journal.account.clone()],
        first_seen_since: Some(journal.since),
        ..Query::default()
    };
    let mut pending = Vec::new();
    index.for_each(&query, &mut |found| {
        let m = found.message();
        if from_account(&m, &journal.account)
            && m.first_seen >= journal.since
            && !journal.delivered.contains(&m.id)
        {
            pending.push(Pending {
                first_seen: m.first_seen,
                candidate: Candidate {
                    id: m.id,
                    size: m.size,
                    time: m.time,
                    flags: Flags::default(),
                    subject: m.envelope.subject.clone(),
                    from: m.envelope.from.clone(),
                    location: found.location.clone(),
                },
            });
        }
        Ok(true)
    })?;
    pending.sort_by_key(|p| (p.first_seen, p.candidate.id));
    Ok(pending)
}

#[derive(Debug, Default, Serialize)]
pub struct DeliveryReport {
    pub account: String,
    pub destination: String,
    pub pending: usize,
    pub delivered: usize,
    /// Messages a killed run had sent that were found on the server (not sent again).
    pub found_delivered: usize,
    pub bytes: u64,
    /// Refused by the server: still pending, tried again next pass.
    pub refused: Vec<Skipped>,
    /// Pending messages not sent, the server having refused them [`GIVE_UP_AFTER`] times.
    pub held_back: usize,
    /// Damaged in the archive: not delivered.
    pub skipped: Vec<Skipped>,
    pub interrupted: bool,
    pub warnings: Vec<String>,
}

/// Delivers what is pending for `journal` through the sink `open` makes (called only when
/// something is pending).
pub fn deliver(
    (index, packs): (&LocalIndex, &PackReader),
    journal: &mut Journal,
    destination: &crate::imap::ImapUrl,
    open: &mut dyn FnMut() -> Result<ImapSink, ForwardError>,
    retry_refused: bool,
    stop: &Stop,
    events: &mut dyn FnMut(Event),
) -> Result<DeliveryReport, ForwardError> {
    let (pending, held_back): (Vec<Candidate>, Vec<Candidate>) = pending(index, &journal.state)?
        .into_iter()
        .map(|p| p.candidate)
        .partition(|c| retry_refused || !journal.state.given_up(&c.id));
    let mut report = DeliveryReport {
        account: journal.state.account.clone(),
        destination: journal.state.destination.clone(),
        pending: pending.len() + held_back.len(),
        held_back: held_back.len(),
        ..DeliveryReport::default()
    };
    if pending.is_empty() {
        return Ok(report);
    }
    let mut imap = open()?;
    imap.ensure_folder().map_err(RestoreError::from)?;
    let mut sink = JournaledSink {
        inner: imap,
        journal,
        unacknowledged: Vec::new(),
        found: 0,
        error: None,
    };
    let options = RestoreOptions {
        stop: stop.clone(),
        ..RestoreOptions::default()
    };
    let destination = Destination::Imap(destination.clone());
    let restored =
        restore::restore_candidates(packs, &mut sink, &destination, &pending, &options, events);
    if let Some(e) = sink.error.take() {
        return Err(e);
    }
    let restored = restored?;
    report.found_delivered = sink.found;
    report.delivered = restored.restored;
    // (The restore counts the bytes it put, refused ones too.)
    let refused: HashSet<Digest> = restored.refused.iter().map(|s| s.id).collect();
    let refused_bytes: u64 = pending
        .iter()
        .filter(|c| refused.contains(&c.id))
        .map(|c| c.size)
        .sum();
    report.bytes = restored.bytes.saturating_sub(refused_bytes);
    report.refused = restored.refused;
    report.skipped = restored.skipped;
    report.interrupted = restored.interrupted;
    report.warnings = restored.warnings;
    report.pending =
        (pending.len() + held_back.len()).saturating_sub(report.delivered + report.found_delivered);
    Ok(report)
}

/// An IMAP sink that journals each message before it is sent and once it is acknowledged.
struct JournaledSink<'j> {
    inner: ImapSink,
    journal: &'j mut Journal,
    /// Sent since the last acknowledgement.
    unacknowledged: Vec<Digest>,
    found: usize,
    /// A journal failure, kept to be reported as itself (the restore sees a write error).
    error: Option<ForwardError>,
}

impl JournaledSink<'_> {
    fn journaled(&mut self, line: Line) -> Result<(), RestoreError> {
        self.journal.record(line).map_err(|e| {
            let message = e.to_string();
            self.error = Some(e);
            RestoreError::Write {
                path: self.journal.path.clone(),
                source: io::Error::other(message),
            }
        })
    }

    /// Waits for every answer, then journals what the server took and what it refused.
    fn acknowledge(&mut self) -> Result<Vec<Skipped>, RestoreError> {
        let refused = self.inner.finish()?;
        let refused_ids: HashSet<Digest> = refused.iter().map(|s| s.id).collect();
        let (refused_now, taken): (Vec<Digest>, Vec<Digest>) =
            std::mem::take(&mut self.unacknowledged)
                .into_iter()
                .partition(|id| refused_ids.contains(id));
        if !refused_now.is_empty() {
            self.journaled(Line::Refused { ids: refused_now })?;
        }
        if !taken.is_empty() {
            self.journaled(Line::Delivered {
                ids: taken,
                at: Utc::now(),
            })?;
        }
        Ok(refused)
    }
}

impl Sink for JournaledSink<'_> {
    /// Only messages a killed run left `sending` may be there; the server is asked about those.
    fn present(
        &mut self,
        packs: &PackReader,
        candidates: &[Candidate],
    ) -> Result<HashSet<Digest>, RestoreError> {
        let in_flight: Vec<Candidate> = candidates
            .iter()
            .filter(|c| self.journal.state.in_flight.contains(&c.id))
            .cloned()
            .collect();
        if in_flight.is_empty() {
            return Ok(HashSet::new());
        }
        let present = self.inner.present(packs, &in_flight)?;
        if !present.is_empty() {
            self.found = present.len();
            self.journaled(Line::Delivered {
                ids: present.iter().copied().collect(),
                at: Utc::now(),
            })?;
        }
        Ok(present)
    }

    fn put(&mut self, candidate: &Candidate, raw: &[u8]) -> Result<(), RestoreError> {
        self.put_all(&[(candidate, raw)]).pop().unwrap_or(Ok(()))
    }

    fn put_all(&mut self, items: &[(&Candidate, &[u8])]) -> Vec<Result<(), RestoreError>> {
        let ids: Vec<Digest> = items.iter().map(|(c, _)| c.id).collect();
        if let Err(e) = self.journaled(Line::Sending { ids: ids.clone() }) {
            return vec![Err(e)];
        }
        let results = self.inner.put_all(items);
        for (id, result) in ids.iter().zip(&results) {
            if result.is_ok() {
                self.unacknowledged.push(*id);
            }
        }
        results
    }

    fn warnings(&mut self) -> Vec<String> {
        self.inner.warnings()
    }

    fn flush(&mut self) -> Result<Vec<Skipped>, RestoreError> {
        self.acknowledge()
    }
}

/// What `status` shows of one destination.
#[derive(Debug, Serialize)]
pub struct DestinationStatus {
    pub account: String,
    pub destination: String,
    /// Why the journal could not be read (then the counts are 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub delivered: usize,
    pub pending: usize,
    pub last_delivery: Option<DateTime<Utc>>,
    /// When the oldest pending message was first archived.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// Pending messages no longer sent by themselves (refused too often).
    pub held_back: usize,
    /// Where its deliveries moved (`forward --renamed-from`): then nothing is pending here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_at: Option<DateTime<Utc>>,
}

/// The state of every forward journal of the archive at `root` (read without locking).
pub fn statuses(index: &LocalIndex, root: &Path) -> Result<Vec<DestinationStatus>, ForwardError> {
    let dir = root.join(JOURNAL_DIR);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let state = match Deliveries::read(&path) {
            // Made and locked by a rename that did not get to write it: nothing there.
            Ok(state) if state.account.is_empty() => continue,
            Ok(state) => state,
            Err(e) => {
                out.push(DestinationStatus {
                    account: String::new(),
                    destination: path.display().to_string(),
                    error: Some(e.to_string()),
                    delivered: 0,
                    pending: 0,
                    last_delivery: None,
                    oldest_pending: None,
                    held_back: 0,
                    renamed_to: None,
                    renamed_at: None,
                });
                continue;
            }
        };
        let pending = match state.renamed {
            Some(_) => Vec::new(),
            None => pending(index, &state)?,
        };
        out.push(DestinationStatus {
            delivered: state.delivered.len(),
            pending: pending.len(),
            last_delivery: state.last_delivery,
            oldest_pending: pending.iter().map(|p| p.first_seen).min(),
            held_back: pending
                .iter()
                .filter(|p| state.given_up(&p.candidate.id))
                .count(),
            renamed_to: state.renamed.as_ref().map(|(to, _)| to.clone()),
            renamed_at: state.renamed.as_ref().map(|(_, at)| *at),
            account: state.account,
            destination: state.destination,
            error: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_lines_count_and_a_bad_whole_line_is_damage() {
        let path = Path::new("j.jsonl");
        let start = r#"{"start":{"account":"a","destination":"d","since":"2026-01-01T00:00:00Z"}}"#;
        let sending = format!(r#"{{"sending":{{"ids":["{}"]}}}}"#, Digest::of(b"x"));
        // A line synced whole but for its line end was never acted on: left out, as a
        // half-written one is, so the journal and the state read from it agree.
        let text = format!("{start}\n{sending}");
        let (lines, whole) = parse_lines(path, text.as_bytes()).unwrap();
        assert_eq!((lines.len(), whole), (1, start.len() as u64 + 1));
        let text = format!("{start}\n{sending}\n{{\"sen");
        assert_eq!(parse_lines(path, text.as_bytes()).unwrap().0.len(), 2);
        let text = format!("{start}\ngarbage\n{sending}\n");
        assert!(matches!(
            parse_lines(path, text.as_bytes()),
            Err(ForwardError::Damaged { line: 2, .. })
        ));
    }

    fn id(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn deliver_ids(journal: &mut Journal, ids: &[u8]) {
        let ids: Vec<Digest> = ids.iter().map(|&n| id(n)).collect();
        journal.record(Line::Sending { ids: ids.clone() }).unwrap();
        journal
            .record(Line::Delivered {
                ids,
                at: Utc::now(),
            })
            .unwrap();
    }

    fn state(root: &Path, destination: &str) -> Deliveries {
        Deliveries::read(&journal_path(root, "a", destination)).unwrap()
    }

    #[test]
    fn a_dry_run_reads_the_journal_as_the_real_run_would_open_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let t0 = Utc::now() - chrono::Duration::days(10);
        let earlier = t0 - chrono::Duration::days(30);
        // A journal made but never given its start line (a crash) starts afresh.
        fs::create_dir_all(root.join(JOURNAL_DIR)).unwrap();
        fs::write(journal_path(root, "a", "D"), b"").unwrap();
        let fresh = Deliveries::peek(root, "a", "D", Some(earlier)).unwrap();
        assert_eq!((fresh.account.as_str(), fresh.since), ("a", earlier));
        let opened = Journal::open(root, "a", "D", Utc::now(), Some(earlier)).unwrap();
        assert_eq!(opened.state.since, earlier);
        drop(opened);
        // An earlier --since moves an existing journal's start back; a later one does not.
        let mut j = Journal::open(root, "a", "E", t0, None).unwrap();
        deliver_ids(&mut j, &[1]);
        drop(j);
        assert_eq!(
            Deliveries::peek(root, "a", "E", Some(earlier))
                .unwrap()
                .since,
            earlier
        );
        assert_eq!(
            Deliveries::peek(root, "a", "E", Some(Utc::now()))
                .unwrap()
                .since,
            t0
        );
        assert_eq!(
            Deliveries::peek(root, "a", "E", None)
                .unwrap()
                .delivered
                .len(),
            1
        );
    }

    #[test]
    fn a_rename_carries_every_delivery_joins_a_journal_already_used_and_can_be_made_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let t0 = Utc::now() - chrono::Duration::days(3);
        let mut old = Journal::open(root, "a", "OLD", t0, None).unwrap();
        deliver_ids(&mut old, &[1, 2]);
        old.record(Line::Refused { ids: vec![id(3)] }).unwrap();
        drop(old);
        // A forward already ran with the new URL (before the user learnt of --renamed-from).
        let mut new = Journal::open(root, "a", "NEW", Utc::now(), None).unwrap();
        deliver_ids(&mut new, &[4]);
        drop(new);

        assert_eq!(
            rename(root, "a", "OLD", "NEW", Utc::now(), false)
                .unwrap()
                .delivered
                .len(),
            3
        );
        let joined = state(root, "NEW");
        assert_eq!(joined.delivered, [1, 2, 4].map(id).into_iter().collect());
        assert_eq!((joined.since, joined.destination.as_str()), (t0, "NEW"));
        assert_eq!(joined.refusals[&id(3)], 1);
        assert_eq!(state(root, "OLD").renamed.unwrap().0, "NEW");
        assert!(matches!(
            Journal::open(root, "a", "OLD", Utc::now(), None),
            Err(ForwardError::Renamed { .. })
        ));

        // A crash after the copy, before the old journal's last line: a re-run finishes it
        // and copies nothing twice.
        let old_path = journal_path(root, "a", "OLD");
        let bytes = fs::read(&old_path).unwrap();
        let cut = bytes[..bytes.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap();
        fs::write(&old_path, &bytes[..=cut]).unwrap();
        let new_bytes = fs::read(journal_path(root, "a", "NEW")).unwrap();
        assert_eq!(
            rename(root, "a", "OLD", "NEW", Utc::now(), false)
                .unwrap()
                .delivered
                .len(),
            3
        );
        assert_eq!(fs::read(journal_path(root, "a", "NEW")).unwrap(), new_bytes);
        assert!(state(root, "OLD").renamed.is_some());

        // Made back: the old journal gets what went through the new URL, its own lines once.
        let mut new = Journal::open(root, "a", "NEW", Utc::now(), None).unwrap();
        deliver_ids(&mut new, &[5]);
        drop(new);
        assert_eq!(
            rename(root, "a", "NEW", "OLD", Utc::now(), false)
                .unwrap()
                .delivered
                .len(),
            4
        );
        let back = state(root, "OLD");
        assert!(back.renamed.is_none());
        assert_eq!(back.refusals[&id(3)], 1, "a refusal is not counted twice");
        assert_eq!(back.destination, "OLD");
        assert!(Journal::open(root, "a", "OLD", Utc::now(), None).is_ok());
        // A journal renamed away cannot be renamed to a third URL: its deliveries are elsewhere.
        assert!(matches!(
            rename(root, "a", "NEW", "THIRD", Utc::now(), false),
            Err(ForwardError::RenamedAway { to, .. }) if to == "OLD"
        ));
        assert!(matches!(
            rename(root, "a", "NOWHERE", "OLD", Utc::now(), false),
            Err(ForwardError::NoJournal { .. })
        ));
    }

    #[test]
    fn a_rename_run_again_changes_nothing_a_torn_line_is_cut_and_a_chain_moves_back_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut a = Journal::open(root, "a", "A", Utc::now(), None).unwrap();
        deliver_ids(&mut a, &[1]);
        a.record(Line::Refused { ids: vec![id(2)] }).unwrap();
        drop(a);
        // A crash tore the old journal's last line.
        let a_path = journal_path(root, "a", "A");
        let mut bytes = fs::read(&a_path).unwrap();
        bytes.extend_from_slice(br#"{"sending":{"ids":["0f3e"#);
        fs::write(&a_path, &bytes).unwrap();

        // A dry run says what the move gives and writes nothing.
        let planned = rename(root, "a", "A", "B", Utc::now(), true).unwrap();
        assert_eq!(planned.delivered.len(), 1);
        assert!(!journal_path(root, "a", "B").exists());
        assert_eq!(fs::read(&a_path).unwrap(), bytes);

        rename(root, "a", "A", "B", Utc::now(), false).unwrap();
        let b_bytes = fs::read(journal_path(root, "a", "B")).unwrap();
        let a_bytes = fs::read(&a_path).unwrap();
        assert!(
            state(root, "A").renamed.is_some(),
            "the mark is a line of its own"
        );
        // Run again: nothing changes.
        let again = rename(root, "a", "A", "B", Utc::now(), false).unwrap();
        assert_eq!(again.refusals[&id(2)], 1);
        assert_eq!(fs::read(journal_path(root, "a", "B")).unwrap(), b_bytes);
        assert_eq!(fs::read(&a_path).unwrap(), a_bytes);

        // A to B to C, then straight back to A: A's lines are in C already.
        let mut b = Journal::open(root, "a", "B", Utc::now(), None).unwrap();
        deliver_ids(&mut b, &[3]);
        drop(b);
        rename(root, "a", "B", "C", Utc::now(), false).unwrap();
        assert!(matches!(
            Journal::open(root, "a", "A", Utc::now(), None),
            Err(ForwardError::Renamed { to, .. }) if to == "C"
        ));
        assert!(matches!(
            rename(root, "a", "A", "D", Utc::now(), false),
            Err(ForwardError::RenamedAway { to, .. }) if to == "C"
        ));
        assert!(
            !journal_path(root, "a", "D").exists(),
            "a refused move leaves no journal behind"
        );
        // The chain from A already ends at C: moving A to C has nothing left to do.
        let c_bytes = fs::read(journal_path(root, "a", "C")).unwrap();
        let there = rename(root, "a", "A", "C", Utc::now(), false).unwrap();
        assert_eq!(there.delivered, [1, 3].map(id).into_iter().collect());
        assert_eq!(fs::read(journal_path(root, "a", "C")).unwrap(), c_bytes);
        let back = rename(root, "a", "C", "A", Utc::now(), false).unwrap();
        assert_eq!(back.delivered, [1, 3].map(id).into_iter().collect());
        assert_eq!(back.refusals[&id(2)], 1, "no line counted twice");
        assert!(Journal::open(root, "a", "A", Utc::now(), None).is_ok());
    }

    #[test]
    fn a_journal_replaced_while_it_is_opened_is_locked_at_its_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forward/x.jsonl");
        let first = lock_journal(&path, "D").unwrap();
        assert!(matches!(
            lock_journal(&path, "D"),
            Err(ForwardError::Busy { .. })
        ));
        // Replaced by a rename while the first holder keeps the lock on the old file.
        let scratch = dir.path().join("forward/x.tmp");
        fs::write(&scratch, b"").unwrap();
        fs::rename(&scratch, &path).unwrap();
        let second = lock_journal(&path, "D").unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            second.metadata().unwrap().ino(),
            fs::metadata(&path).unwrap().ino()
        );
        drop(first);
    }
}
