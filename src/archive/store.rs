//! `Archive` (a read-only view of committed state) and `Writer` (the only way to add to it).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::ArchiveError;
use super::catalog::{
    self, AccountRun, CommitRecord, Entry, FORMAT_VERSION, FileRef, Source, StoredAt,
};
use super::digest::Digest;
use super::durable;
use super::envelope::Envelope;
use super::lock::WriterLock;
use super::pack::{self, PackWriter, RECORD_HEADER_LEN, RecordFault};

const HEADER_FILE: &str = "popvault-archive.json";
const FORMAT_NAME: &str = "popvault-archive";

/// A batch is committed once its pack reaches this size...
const COMMIT_PACK_BYTES: u64 = 64 << 20;
/// ...or it holds this many catalog lines...
const COMMIT_ENTRIES: usize = 2_000;
/// ...or it has been open this long, so a long backup keeps committing what it has.
const COMMIT_SECONDS: u64 = 30;
/// Messages up to this size are read whole (hashed before compressing, so duplicates cost no
/// compression); larger ones stream through the compressor with bounded memory.
const INLINE_LIMIT: usize = 8 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    created: DateTime<Utc>,
}

/// Where a message's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub pack: String,
    pub offset: u64,
    pub stored_len: u64,
    pub size: u64,
}

/// One unique message (one id) with every source it was seen in.
#[derive(Debug, Clone, Serialize)]
pub struct Message<'a> {
    pub id: Digest,
    pub size: u64,
    pub first_seen: DateTime<Utc>,
    #[serde(flatten)]
    pub envelope: &'a Envelope,
    pub sources: Vec<&'a Source>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<&'a str>,
}

/// The committed state of an archive. Opening never writes and never waits for a writer.
pub struct Archive {
    root: PathBuf,
    commits: Vec<CommitRecord>,
    entries: Vec<Entry>,
    /// id -> index in `entries` of the line that stored its bytes.
    stored: HashMap<Digest, usize>,
    /// Problems found while loading (damaged records or segments); `verify` reports them.
    load_issues: Vec<String>,
    last_commit: u64,
}

impl Archive {
    /// Creates an empty archive at `root`, which must be missing or an empty directory.
    pub fn init(root: &Path) -> Result<(), ArchiveError> {
        if root.join(HEADER_FILE).exists() {
            return Err(ArchiveError::AlreadyAnArchive {
                path: root.to_path_buf(),
            });
        }
        if let Ok(mut dir) = fs::read_dir(root) {
            if dir.next().is_some() {
                return Err(ArchiveError::NotAnArchive {
                    path: root.to_path_buf(),
                });
            }
        } else if root.exists() {
            return Err(ArchiveError::NotAnArchive {
                path: root.to_path_buf(),
            });
        }
        for sub in ["", "packs", "catalog", "commits", "tmp"] {
            durable::create_dir(&root.join(sub)).map_err(ArchiveError::io(root.join(sub)))?;
        }
        durable::create_new(&root.join("lock")).map_err(ArchiveError::io(root.join("lock")))?;
        let header = Header {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            created: Utc::now(),
        };
        let text = serde_json::to_string_pretty(&header).expect("header serializes") + "\n";
        durable::write_once(&root.join("tmp"), &root.join(HEADER_FILE), text.as_bytes())
            .map_err(ArchiveError::io(root.join(HEADER_FILE)))?;
        if let Some(parent) = root.parent() {
            let _ = durable::sync_dir(parent);
        }
        Ok(())
    }

    /// Opens the archive at `root`, creating it first if it does not exist yet (writers do this).
    pub fn open_or_create(root: &Path) -> Result<Archive, ArchiveError> {
        if !root.join(HEADER_FILE).exists() {
            Archive::init(root)?;
        }
        Archive::open(root)
    }

    pub fn open(root: &Path) -> Result<Archive, ArchiveError> {
        let header_path = root.join(HEADER_FILE);
        let text = match fs::read_to_string(&header_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(if root.is_dir() {
                    ArchiveError::NotAnArchive {
                        path: root.to_path_buf(),
                    }
                } else {
                    ArchiveError::NotFound {
                        path: root.to_path_buf(),
                    }
                });
            }
            Err(e) => return Err(ArchiveError::io(&header_path)(e)),
        };
        let header: Header = serde_json::from_str(&text).map_err(|e| ArchiveError::BadHeader {
            path: header_path.clone(),
            reason: e.to_string(),
        })?;
        if header.format != FORMAT_NAME {
            return Err(ArchiveError::BadHeader {
                path: header_path,
                reason: format!("format is {:?}", header.format),
            });
        }
        if header.version > FORMAT_VERSION {
            return Err(ArchiveError::TooNew {
                path: root.to_path_buf(),
                version: header.version,
                supported: FORMAT_VERSION,
            });
        }
        let mut archive = Archive {
            root: root.to_path_buf(),
            commits: Vec::new(),
            entries: Vec::new(),
            stored: HashMap::new(),
            load_issues: Vec::new(),
            last_commit: 0,
        };
        archive.load()?;
        Ok(archive)
    }

    fn load(&mut self) -> Result<(), ArchiveError> {
        let commits_dir = self.root.join("commits");
        let mut numbers: Vec<(u64, String)> = list_dir(&commits_dir)?
            .into_iter()
            .filter_map(|name| Some((catalog::commit_of_file_name(&name)?, name)))
            .collect();
        numbers.sort();
        self.last_commit = numbers.last().map_or(0, |(n, _)| *n);
        let mut expected = 1;
        for (number, name) in numbers {
            if number != expected {
                self.load_issues.push(format!(
                    "commit records {expected:08} to {:08} are missing",
                    number - 1
                ));
            }
            expected = number + 1;
            let path = commits_dir.join(&name);
            let record = fs::read(&path).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<CommitRecord>(&b).map_err(|e| e.to_string())
            });
            match record {
                Ok(record) if record.commit == number => {
                    self.load_segment(&record)?;
                    self.commits.push(record);
                }
                Ok(_) => self
                    .load_issues
                    .push(format!("commit record {name} names another commit number")),
                Err(e) => self
                    .load_issues
                    .push(format!("commit record {name} is unreadable: {e}")),
            }
        }
        Ok(())
    }

    fn load_segment(&mut self, record: &CommitRecord) -> Result<(), ArchiveError> {
        let path = self.root.join("catalog").join(&record.segment.name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.load_issues.push(format!(
                    "catalog segment {} is missing",
                    record.segment.name
                ));
                return Ok(());
            }
            Err(e) => return Err(ArchiveError::io(&path)(e)),
        };
        if bytes.len() as u64 != record.segment.size
            || Some(Digest::of(&bytes)) != record.segment.sha256
        {
            self.load_issues.push(format!(
                "catalog segment {} is damaged (its size or SHA-256 differs from commit {:08}); readable lines are used",
                record.segment.name, record.commit
            ));
        }
        let (text, problems) = catalog::decode_segment(&bytes);
        for p in problems {
            self.load_issues
                .push(format!("catalog segment {}: {p}", record.segment.name));
        }
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Entry>(line) {
                Ok(entry) => self.push_entry(entry),
                Err(e) => self.load_issues.push(format!(
                    "catalog segment {} line {} is unreadable: {e}",
                    record.segment.name,
                    n + 1
                )),
            }
        }
        Ok(())
    }

    fn push_entry(&mut self, entry: Entry) {
        if entry.stored.is_some() {
            self.stored.entry(entry.id).or_insert(self.entries.len());
        }
        self.entries.push(entry);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn commits(&self) -> &[CommitRecord] {
        &self.commits
    }

    /// Every catalog line, in commit order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn load_issues(&self) -> &[String] {
        &self.load_issues
    }

    pub fn contains(&self, id: &Digest) -> bool {
        self.stored.contains_key(id)
    }

    pub fn location(&self, id: &Digest) -> Option<Location> {
        let entry = &self.entries[*self.stored.get(id)?];
        let at = entry.stored.as_ref()?;
        Some(Location {
            pack: at.pack.clone(),
            offset: at.offset,
            stored_len: at.stored_len,
            size: entry.size,
        })
    }

    /// The catalog line that stored `id` (its envelope is the message's).
    pub fn stored_entry(&self, id: &Digest) -> Option<&Entry> {
        self.stored.get(id).map(|&i| &self.entries[i])
    }

    /// Unique messages (one per id), each with all its sources, in the order first stored.
    pub fn messages(&self) -> Vec<Message<'_>> {
        let mut by_id: HashMap<Digest, usize> = HashMap::new();
        let mut out: Vec<Message<'_>> = Vec::new();
        for entry in &self.entries {
            if !self.stored.contains_key(&entry.id) {
                continue; // its storing line was lost; verify reports it
            }
            match by_id.get(&entry.id) {
                Some(&i) => {
                    let m = &mut out[i];
                    m.first_seen = m.first_seen.min(entry.first_seen);
                    if !m.sources.contains(&&entry.source) {
                        m.sources.push(&entry.source);
                    }
                    if m.flags.is_none() {
                        m.flags = entry.flags.as_deref();
                    }
                }
                None => {
                    let stored = self.stored_entry(&entry.id).expect("checked above");
                    by_id.insert(entry.id, out.len());
                    out.push(Message {
                        id: entry.id,
                        size: entry.size,
                        first_seen: entry.first_seen,
                        envelope: &stored.envelope,
                        sources: vec![&entry.source],
                        flags: entry.flags.as_deref(),
                    });
                }
            }
        }
        out
    }

    /// Finds the one message whose id starts with `prefix` (hex, any case).
    pub fn resolve(&self, prefix: &str) -> Result<Digest, ArchiveError> {
        let p = prefix.to_ascii_lowercase();
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ArchiveError::UnknownId {
                prefix: prefix.into(),
            });
        }
        let mut found = self.stored.keys().filter(|id| id.hex().starts_with(&p));
        match (found.next(), found.count()) {
            (None, _) => Err(ArchiveError::UnknownId {
                prefix: prefix.into(),
            }),
            (Some(id), 0) => Ok(*id),
            (Some(_), more) => Err(ArchiveError::AmbiguousId {
                prefix: prefix.into(),
                count: more + 1,
            }),
        }
    }

    pub fn pack_path(&self, name: &str) -> PathBuf {
        self.root.join("packs").join(name)
    }

    /// Streams message `id` to `out`, after first checking that it decompresses to exactly its
    /// id: nothing is written for a damaged message. Memory stays bounded whatever its size.
    pub fn copy_message(&self, id: &Digest, out: &mut dyn Write) -> Result<(), ArchiveError> {
        let loc = self
            .location(id)
            .ok_or_else(|| ArchiveError::UnknownId { prefix: id.hex() })?;
        let damaged = |fault| ArchiveError::DamagedMessage {
            id: *id,
            pack: loc.pack.clone(),
            fault,
        };
        let path = self.pack_path(&loc.pack);
        let mut file = File::open(&path).map_err(|e| damaged(RecordFault::Io(e)))?;
        self.check_message(id, &loc, &mut file).map_err(damaged)?;
        file.seek(SeekFrom::Start(loc.offset + RECORD_HEADER_LEN))
            .map_err(ArchiveError::io(&path))?;
        let mut stored = BufReader::new(file).take(loc.stored_len);
        pack::copy_decompressed(loc.size, &mut stored, out).map_err(damaged)
    }

    /// Decompresses and re-hashes one message in `file` (its pack).
    pub fn check_message(
        &self,
        id: &Digest,
        loc: &Location,
        file: &mut File,
    ) -> Result<(), RecordFault> {
        let header = pack::read_record_header(file, loc.offset)?;
        if header.id != *id || header.raw_len != loc.size || header.stored_len != loc.stored_len {
            return Err(RecordFault::Mismatch);
        }
        let mut stored = BufReader::new(&mut *file).take(loc.stored_len);
        pack::check_record(&header, &mut stored)
    }

    /// Reads and verifies a whole message into memory (for callers that need the bytes at once).
    pub fn read_message(&self, id: &Digest) -> Result<Vec<u8>, ArchiveError> {
        let mut out = Vec::with_capacity(self.location(id).map_or(0, |l| l.size as usize));
        self.copy_message(id, &mut out)?;
        Ok(out)
    }

    /// Takes the writer lock and returns a `Writer` on freshly loaded state.
    pub fn writer(root: &Path, command: &str, wait: bool) -> Result<Writer, ArchiveError> {
        if !root.join(HEADER_FILE).exists() {
            Archive::init(root)?;
        }
        let lock = WriterLock::acquire(&root.join("lock"), command, wait)?;
        let archive = Archive::open(root)?;
        archive.remove_uncommitted()?;
        Ok(Writer::new(archive, lock, command))
    }

    /// Deletes what an interrupted writer left: everything in `tmp/`, and segments and packs of
    /// commit numbers above the last commit record. Files of committed numbers are never deleted
    /// here, even when no record names them (verify reports those).
    fn remove_uncommitted(&self) -> Result<(), ArchiveError> {
        let tmp = self.root.join("tmp");
        for name in list_dir(&tmp)? {
            fs::remove_file(tmp.join(&name)).map_err(ArchiveError::io(tmp.join(&name)))?;
        }
        for sub in ["catalog", "packs"] {
            let dir = self.root.join(sub);
            for name in list_dir(&dir)? {
                if catalog::commit_of_file_name(&name).is_some_and(|n| n > self.last_commit) {
                    fs::remove_file(dir.join(&name)).map_err(ArchiveError::io(dir.join(&name)))?;
                }
            }
            durable::sync_dir(&dir).map_err(ArchiveError::io(&dir))?;
        }
        Ok(())
    }

    /// Files in `packs/` and `catalog/` that no commit record names.
    pub fn unreferenced_files(&self) -> Result<Vec<String>, ArchiveError> {
        let mut named: HashSet<String> = HashSet::new();
        for c in &self.commits {
            named.insert(format!("catalog/{}", c.segment.name));
            named.extend(c.packs.iter().map(|p| format!("packs/{}", p.name)));
        }
        let mut out = Vec::new();
        for sub in ["catalog", "packs"] {
            for name in list_dir(&self.root.join(sub))? {
                let rel = format!("{sub}/{name}");
                if !named.contains(&rel) {
                    out.push(rel);
                }
            }
        }
        Ok(out)
    }

    /// The commit number files of an interrupted writer would have (above every commit record).
    pub fn last_commit(&self) -> u64 {
        self.last_commit
    }
}

fn list_dir(dir: &Path) -> Result<Vec<String>, ArchiveError> {
    let mut names = Vec::new();
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(ArchiveError::io(dir)(e)),
    };
    for entry in read {
        let entry = entry.map_err(ArchiveError::io(dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// A message to add, held in memory.
pub struct Incoming {
    pub raw: Vec<u8>,
    pub source: Source,
    pub flags: Option<String>,
    pub first_seen: DateTime<Utc>,
}

/// What adding one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// New bytes, stored.
    New,
    /// The bytes were already stored; this source is now recorded too.
    Duplicate,
    /// This very source was already recorded: nothing changed.
    Known,
}

/// Running totals of one writer, over all its commits.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriterTotals {
    pub commits: u64,
    pub entries: u64,
    pub new_messages: u64,
    pub duplicates: u64,
    pub known: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

/// The single writer of an archive: holds the lock, appends to a pack under `tmp/`, and commits
/// in batches. Nothing it adds is visible (to readers or after a crash) before `commit` returns.
pub struct Writer {
    archive: Archive,
    _lock: WriterLock,
    command: String,
    level: i32,
    /// (id, source) pairs already in the catalog or the open batch.
    known: HashSet<(Digest, Source)>,
    /// (account, UIDL) pairs already archived.
    uidls: HashSet<(String, String)>,
    batch: Batch,
    accounts: Vec<AccountRun>,
    totals: WriterTotals,
}

struct Batch {
    started: DateTime<Utc>,
    opened: Instant,
    pack: Option<PackWriter>,
    entries: Vec<Entry>,
    /// ids whose bytes this batch stores -> index in `entries`.
    stored: HashMap<Digest, usize>,
    raw_bytes: u64,
    stored_bytes: u64,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            started: Utc::now(),
            opened: Instant::now(),
            pack: None,
            entries: Vec::new(),
            stored: HashMap::new(),
            raw_bytes: 0,
            stored_bytes: 0,
        }
    }
}

impl Writer {
    fn new(archive: Archive, lock: WriterLock, command: &str) -> Writer {
        let mut known = HashSet::with_capacity(archive.entries.len());
        let mut uidls = HashSet::new();
        for e in &archive.entries {
            known.insert((e.id, e.source.clone()));
            if let Source::Pop3 {
                account,
                uidl: Some(uidl),
            } = &e.source
            {
                uidls.insert((account.clone(), uidl.clone()));
            }
        }
        Writer {
            archive,
            _lock: lock,
            command: command.into(),
            level: 3,
            known,
            uidls,
            batch: Batch::new(),
            accounts: Vec::new(),
            totals: WriterTotals::default(),
        }
    }

    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    pub fn totals(&self) -> &WriterTotals {
        &self.totals
    }

    /// Whether this account's UIDL is archived (committed or in the open batch).
    pub fn has_uidl(&self, account: &str, uidl: &str) -> bool {
        self.uidls
            .contains(&(account.to_string(), uidl.to_string()))
    }

    /// Whether bytes with this id are stored (committed or in the open batch).
    pub fn has_bytes(&self, id: &Digest) -> bool {
        self.archive.contains(id) || self.batch.stored.contains_key(id)
    }

    /// Records the state of a POP3 account in the next commit record.
    pub fn record_account(&mut self, run: AccountRun) {
        self.accounts.retain(|a| a.account != run.account);
        self.accounts.push(run);
    }

    /// Adds a message held in memory.
    pub fn add_bytes(
        &mut self,
        raw: &[u8],
        source: Source,
        flags: Option<String>,
        first_seen: DateTime<Utc>,
    ) -> Result<Added, ArchiveError> {
        let incoming = Incoming {
            raw: raw.to_vec(),
            source,
            flags,
            first_seen,
        };
        Ok(self.add_batch(vec![incoming])?[0])
    }

    /// Adds many messages held in memory, hashing and compressing them on all cores. The caller
    /// bounds the batch's memory (e.g. 32 MiB); the result has one `Added` per message, in order.
    pub fn add_batch(&mut self, batch: Vec<Incoming>) -> Result<Vec<Added>, ArchiveError> {
        let ids: Vec<Digest> = batch.par_iter().map(|m| Digest::of(&m.raw)).collect();
        let mut compress = vec![false; batch.len()];
        let mut claimed = HashSet::new();
        for (i, m) in batch.iter().enumerate() {
            let id = ids[i];
            compress[i] = !self.known.contains(&(id, m.source.clone()))
                && !self.has_bytes(&id)
                && claimed.insert(id);
        }
        let level = self.level;
        let frames: Vec<Option<(Vec<u8>, Envelope)>> = batch
            .par_iter()
            .zip(&ids)
            .zip(&compress)
            .map(|((m, id), &wanted)| {
                wanted
                    .then(|| {
                        Ok((
                            pack::compress_checked(*id, &m.raw, level)?,
                            Envelope::parse(&m.raw),
                        ))
                    })
                    .transpose()
            })
            .collect::<Result<_, RecordFault>>()
            .map_err(|fault| ArchiveError::SelfCheck { fault })?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for ((m, id), frame) in batch.into_iter().zip(ids).zip(frames) {
            if self.known.contains(&(id, m.source.clone())) {
                self.totals.known += 1;
                outcomes.push(Added::Known);
                continue;
            }
            let size = m.raw.len() as u64;
            let stored = match frame {
                Some((frame, envelope)) => {
                    let tmp = self.tmp_pack_path();
                    let span = self
                        .open_pack()?
                        .append_frame(id, size, &frame)
                        .map_err(ArchiveError::io(tmp))?;
                    Some((span, envelope))
                }
                None => None,
            };
            outcomes.push(self.record(id, size, m.source, m.flags, m.first_seen, stored)?);
        }
        Ok(outcomes)
    }

    /// Adds a message read from `reader` until EOF; memory stays bounded for any size. A read
    /// error leaves nothing behind and comes back as `ArchiveError::Read`.
    pub fn add_stream(
        &mut self,
        reader: &mut dyn Read,
        source: Source,
        flags: Option<String>,
        first_seen: DateTime<Utc>,
    ) -> Result<(Digest, Added), ArchiveError> {
        let mut head = Vec::new();
        let read_err = |e: io::Error| ArchiveError::Read {
            what: source.label(),
            source: e,
        };
        (&mut *reader)
            .take(INLINE_LIMIT as u64 + 1)
            .read_to_end(&mut head)
            .map_err(read_err)?;
        if head.len() <= INLINE_LIMIT {
            let id = Digest::of(&head);
            let incoming = Incoming {
                raw: head,
                source,
                flags,
                first_seen,
            };
            return Ok((id, self.add_batch(vec![incoming])?[0]));
        }
        let envelope = Envelope::parse(&head);
        let tmp = self.tmp_pack_path();
        let pack = self.open_pack()?;
        let before = pack.position();
        let mut tracked = TrackedReader {
            inner: reader,
            failed: false,
        };
        let (id, size, span) = match pack.append_stream(&head, &mut tracked) {
            Ok(done) => done,
            Err(e) => {
                pack.truncate(before).map_err(ArchiveError::io(&tmp))?;
                return Err(if tracked.failed {
                    read_err(e)
                } else {
                    ArchiveError::io(&tmp)(e)
                });
            }
        };
        let known = self.known.contains(&(id, source.clone()));
        if known || self.has_bytes(&id) {
            let pack = self.batch.pack.as_mut().expect("open");
            pack.truncate(before).map_err(ArchiveError::io(&tmp))?;
            if known {
                self.totals.known += 1;
                return Ok((id, Added::Known));
            }
            return Ok((id, self.record(id, size, source, flags, first_seen, None)?));
        }
        Ok((
            id,
            self.record(id, size, source, flags, first_seen, Some((span, envelope)))?,
        ))
    }

    fn record(
        &mut self,
        id: Digest,
        size: u64,
        source: Source,
        flags: Option<String>,
        first_seen: DateTime<Utc>,
        stored: Option<(pack::RecordSpan, Envelope)>,
    ) -> Result<Added, ArchiveError> {
        let added = if stored.is_some() {
            Added::New
        } else {
            Added::Duplicate
        };
        let envelope = match &stored {
            Some((_, env)) => env.clone(),
            None => self.envelope_of(&id),
        };
        let stored_at = stored.map(|(span, _)| {
            self.batch.stored_bytes += RECORD_HEADER_LEN + span.stored_len;
            self.batch.raw_bytes += size;
            self.batch.stored.insert(id, self.batch.entries.len());
            StoredAt {
                pack: String::new(),
                offset: span.offset,
                stored_len: span.stored_len,
            }
        });
        if let Source::Pop3 {
            account,
            uidl: Some(uidl),
        } = &source
        {
            self.uidls.insert((account.clone(), uidl.clone()));
        }
        self.known.insert((id, source.clone()));
        self.batch.entries.push(Entry {
            id,
            size,
            source,
            first_seen,
            flags,
            envelope,
            stored: stored_at,
        });
        match added {
            Added::New => self.totals.new_messages += 1,
            _ => self.totals.duplicates += 1,
        }
        if self.batch_due() {
            self.commit()?;
        }
        Ok(added)
    }

    fn envelope_of(&self, id: &Digest) -> Envelope {
        if let Some(&i) = self.batch.stored.get(id) {
            return self.batch.entries[i].envelope.clone();
        }
        self.archive
            .stored_entry(id)
            .map(|e| e.envelope.clone())
            .unwrap_or_default()
    }

    fn batch_due(&self) -> bool {
        self.batch
            .pack
            .as_ref()
            .is_some_and(|p| p.position() >= COMMIT_PACK_BYTES)
            || self.batch.entries.len() >= COMMIT_ENTRIES
            || self.batch.opened.elapsed().as_secs() >= COMMIT_SECONDS
    }

    fn next_commit(&self) -> u64 {
        self.archive.last_commit + 1
    }

    fn tmp_pack_path(&self) -> PathBuf {
        self.archive
            .root
            .join("tmp")
            .join(format!("{:08}.pack", self.next_commit()))
    }

    fn open_pack(&mut self) -> Result<&mut PackWriter, ArchiveError> {
        if self.batch.pack.is_none() {
            let path = self.tmp_pack_path();
            let pack =
                PackWriter::create(path.clone(), self.level).map_err(ArchiveError::io(&path))?;
            self.batch.pack = Some(pack);
        }
        Ok(self.batch.pack.as_mut().expect("just opened"))
    }

    /// Makes everything added so far durable and visible: seals the pack (after re-verifying every
    /// record), writes the catalog segment, then the commit record, the commit point. Returns the
    /// commit number, or `None` when there was nothing to commit.
    pub fn commit(&mut self) -> Result<Option<u64>, ArchiveError> {
        if self.batch.entries.is_empty() && self.accounts.is_empty() {
            self.batch.opened = Instant::now();
            return Ok(None);
        }
        let number = self.next_commit();
        let root = self.archive.root.clone();
        let tmp = root.join("tmp");
        let mut batch = std::mem::replace(&mut self.batch, Batch::new());
        let mut packs = Vec::new();
        if let Some(pack) = batch.pack.take() {
            let sealed = pack.seal(&root.join("packs"), &format!("{number:08}"))?;
            for entry in &mut batch.entries {
                if let Some(at) = &mut entry.stored {
                    at.pack = sealed.name.clone();
                }
            }
            packs.push(FileRef {
                name: sealed.name,
                size: sealed.size,
                sha256: None,
            });
        }
        let segment = catalog::encode_segment(&batch.entries);
        let segment_ref = FileRef {
            name: catalog::segment_file_name(number),
            size: segment.len() as u64,
            sha256: Some(Digest::of(&segment)),
        };
        let segment_path = root.join("catalog").join(&segment_ref.name);
        durable::write_once(&tmp, &segment_path, &segment)
            .map_err(ArchiveError::io(&segment_path))?;
        let record = CommitRecord {
            commit: number,
            format: FORMAT_VERSION,
            tool: format!("popvault {}", env!("CARGO_PKG_VERSION")),
            command: self.command.clone(),
            started: batch.started,
            finished: Utc::now(),
            segment: segment_ref,
            packs,
            entries: batch.entries.len() as u64,
            new_objects: batch.stored.len() as u64,
            raw_bytes: batch.raw_bytes,
            stored_bytes: batch.stored_bytes,
            accounts: std::mem::take(&mut self.accounts),
        };
        let record_path = root.join("commits").join(catalog::commit_file_name(number));
        let text = serde_json::to_string_pretty(&record).expect("commit record serializes") + "\n";
        durable::write_once(&tmp, &record_path, text.as_bytes())
            .map_err(ArchiveError::io(&record_path))?;

        self.totals.commits += 1;
        self.totals.entries += record.entries;
        self.totals.raw_bytes += record.raw_bytes;
        self.totals.stored_bytes += record.stored_bytes;
        self.archive.last_commit = number;
        self.archive.commits.push(record);
        for entry in batch.entries {
            self.archive.push_entry(entry);
        }
        Ok(Some(number))
    }

    /// Commits what is left and releases the lock.
    pub fn finish(mut self) -> Result<(Archive, WriterTotals), ArchiveError> {
        self.commit()?;
        Ok((self.archive, self.totals))
    }
}

/// Remembers whether an error came from the source (rather than from writing the pack).
struct TrackedReader<'a> {
    inner: &'a mut dyn Read,
    failed: bool,
}

impl Read for TrackedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.failed = true)
    }
}
