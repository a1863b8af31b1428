//! `Writer`: the only way to add to an archive. It holds the lock, appends to a pack under
//! `tmp/`, and commits in batches; nothing it adds is visible, to readers or after a crash,
//! before `commit` returns.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use serde::Serialize;

use super::ArchiveError;
use super::catalog::{
    self, AccountRun, CommitRecord, Entry, FORMAT_VERSION, FileRef, Lost, Source, StoredAt,
};
use super::digest::Digest;
use super::durable;
use super::envelope::Envelope;
use super::index::{self, Index, list_dir};
use super::lock::WriterLock;
use super::pack::{self, PackWriter, RECORD_HEADER_LEN, RecordFault, RecordSpan};
use super::store::{self, Archive};
use crate::stop::Stop;

/// A batch is committed once its pack reaches this size...
const COMMIT_PACK_BYTES: u64 = 64 << 20;
/// ...or it holds this many catalog lines...
const COMMIT_ENTRIES: usize = 2_000;
/// ...or it has been open this long, so a long backup keeps committing what it has.
const COMMIT_SECONDS: u64 = 30;
/// Messages up to this size are read whole (hashed before compressing, so duplicates cost no
/// compression); larger ones stream through the compressor with bounded memory.
const INLINE_LIMIT: usize = 8 << 20;

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

pub struct Writer {
    /// Committed state, plus the sightings of the open batch.
    index: Index,
    _lock: WriterLock,
    command: String,
    level: i32,
    batch: Batch,
    accounts: Vec<AccountRun>,
    /// For the next commit record: what `repair` retires, and messages it found lost.
    retired: Vec<String>,
    retired_segments: Vec<String>,
    retired_commits: Vec<u64>,
    lost: Vec<Lost>,
    totals: WriterTotals,
    /// For an archive kept on an object store: uploads each commit once it is durable here.
    publisher: Option<super::remote::Publisher>,
    /// For an encrypted archive: its keys (the public ones, and this host's writer key).
    sealed: Option<std::sync::Arc<super::crypto::Sealed>>,
}

struct Batch {
    started: DateTime<Utc>,
    opened: Instant,
    pack: Option<PackWriter>,
    entries: Vec<Entry>,
    /// ids whose bytes this batch stores.
    stored: HashSet<Digest>,
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
            stored: HashSet::new(),
            raw_bytes: 0,
            stored_bytes: 0,
        }
    }
}

impl Writer {
    /// Takes the writer lock on the archive at `root` (creating the archive if it does not exist
    /// yet), removes what an interrupted writer left, and loads the committed state.
    pub fn open(root: &Path, command: &str, wait: Option<&Stop>) -> Result<Writer, ArchiveError> {
        if !store::is_archive(root) {
            Archive::init(root)?;
        }
        let lock = WriterLock::acquire(&root.join("lock"), command, wait)?;
        store::check_header(root)?;
        let sealed = super::crypto::sealed(root)?;
        super::crypto::check_pin(root, sealed.as_ref().map(|s| s.encryption()))?;
        if let Some(sealed) = &sealed {
            sealed.check_writer()?;
            // Plaintext scratch files of an encrypted archive stay on this host, never in it.
            let scratch = sealed.host_cache_dir().join("scratch");
            let _ = fs::remove_dir_all(&scratch);
            for dir in [
                sealed.host_cache_dir(),
                scratch,
                sealed.host_cache_dir().join("tmp"),
            ] {
                fs::create_dir_all(&dir).map_err(ArchiveError::io(&dir))?;
            }
        }
        remove_uncommitted(root)?;
        let index = Index::load(root)?;
        Ok(Writer {
            index,
            _lock: lock,
            command: command.into(),
            level: 3,
            batch: Batch::new(),
            accounts: Vec::new(),
            retired: Vec::new(),
            retired_segments: Vec::new(),
            retired_commits: Vec::new(),
            lost: Vec::new(),
            totals: WriterTotals::default(),
            publisher: None,
            sealed,
        })
    }

    pub(crate) fn publish_to(&mut self, publisher: super::remote::Publisher) {
        self.publisher = Some(publisher);
    }

    /// Waits until every commit so far is uploaded, for an archive kept on an object store
    /// (at once for a local one): only then may a backup delete what they hold from a server.
    pub fn wait_uploaded(&mut self) -> Result<(), ArchiveError> {
        match &mut self.publisher {
            Some(publisher) => publisher.wait(),
            None => Ok(()),
        }
    }

    /// The committed archive plus the sightings of the open batch.
    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn totals(&self) -> &WriterTotals {
        &self.totals
    }

    /// Whether bytes with this id are stored (committed or in the open batch).
    pub fn has_bytes(&self, id: &Digest) -> bool {
        self.index.has_bytes(id) || self.batch.stored.contains(id)
    }

    /// Retires a pack (for `repair`): from now on no location in it counts, so its readable
    /// messages can be stored again; the next commit record names it.
    pub fn retire_pack(&mut self, name: &str) {
        self.index.void_pack(name);
        self.retired.push(name.to_string());
    }

    /// Replaces a damaged segment (for `repair`): `readable` are its lines that could still be
    /// read; they go into the next commit's segment and the old one stops counting.
    pub fn retire_segment(&mut self, name: &str, readable: Vec<Entry>) {
        for entry in readable {
            self.index
                .note_sighting(&entry.id, &entry.source, entry.first_seen);
            self.batch.entries.push(entry);
        }
        self.retired_segments.push(name.to_string());
    }

    /// Accepts that commit record `commit` is gone (for `repair`, which moved it aside).
    pub fn retire_commit(&mut self, commit: u64) {
        self.retired_commits.push(commit);
    }

    /// Declares a message unrecoverable in the next commit record (for `repair`).
    pub fn record_lost(&mut self, lost: Lost) {
        self.lost.push(lost);
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
    /// bounds the batch's memory (e.g. 16 MiB); the result has one `Added` per message, in order.
    pub fn add_batch(&mut self, batch: Vec<Incoming>) -> Result<Vec<Added>, ArchiveError> {
        let also = vec![None; batch.len()];
        self.add_batch_also(batch, also)
    }

    /// [`Writer::add_batch`], where a message may have been seen in a second source too
    /// (`also`, one entry per message): recorded as well, the bytes hashed once.
    pub fn add_batch_also(
        &mut self,
        batch: Vec<Incoming>,
        also: Vec<Option<Source>>,
    ) -> Result<Vec<Added>, ArchiveError> {
        let ids: Vec<Digest> = batch.par_iter().map(|m| Digest::of(&m.raw)).collect();
        let mut claimed = HashSet::new();
        // Bytes that are not stored are stored, even for a source already recorded: that is how
        // a message `repair` declared lost heals when it is seen again.
        let compress: Vec<bool> = ids
            .iter()
            .map(|id| !self.has_bytes(id) && claimed.insert(*id))
            .collect();
        let level = self.level;
        let frames: Vec<Option<Vec<u8>>> = batch
            .par_iter()
            .zip(&ids)
            .zip(&compress)
            .map(|((m, id), &wanted)| {
                wanted
                    .then(|| pack::RecordCodec::seal(*id, &m.raw, level))
                    .transpose()
            })
            .collect::<Result<_, RecordFault>>()
            .map_err(|fault| ArchiveError::SelfCheck { fault })?;
        let envelopes: Vec<Envelope> = batch.par_iter().map(|m| Envelope::parse(&m.raw)).collect();
        let mut outcomes = Vec::with_capacity(batch.len());
        for ((((m, id), frame), envelope), also) in batch
            .into_iter()
            .zip(ids)
            .zip(frames)
            .zip(envelopes)
            .zip(also)
        {
            let size = m.raw.len() as u64;
            let first_seen = m.first_seen;
            if frame.is_none() && self.index.knows(&id, &m.source) {
                self.totals.known += 1;
                outcomes.push(Added::Known);
            } else {
                let span = match frame {
                    Some(frame) => {
                        let tmp = self.tmp_pack_path();
                        Some(
                            self.open_pack()?
                                .append_frame(id, size, &frame)
                                .map_err(ArchiveError::io(tmp))?,
                        )
                    }
                    None => None,
                };
                let envelope = envelope.clone();
                outcomes
                    .push(self.record(id, size, m.source, m.flags, first_seen, envelope, span)?);
            }
            // After the line that stores the bytes (a commit may come between the two), so
            // no committed line names bytes that are not.
            if let Some(source) = also.filter(|s| !self.index.knows(&id, s)) {
                self.record(id, size, source, None, first_seen, envelope, None)?;
            }
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
        if self.has_bytes(&id) {
            let pack = self.batch.pack.as_mut().expect("opened above");
            pack.truncate(before).map_err(ArchiveError::io(&tmp))?;
            if self.index.knows(&id, &source) {
                self.totals.known += 1;
                return Ok((id, Added::Known));
            }
            return Ok((
                id,
                self.record(id, size, source, flags, first_seen, envelope, None)?,
            ));
        }
        Ok((
            id,
            self.record(id, size, source, flags, first_seen, envelope, Some(span))?,
        ))
    }

    /// Puts one catalog line into the open batch; `span` is where its bytes went, when this
    /// line stores them.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        id: Digest,
        size: u64,
        source: Source,
        flags: Option<String>,
        first_seen: DateTime<Utc>,
        envelope: Envelope,
        span: Option<RecordSpan>,
    ) -> Result<Added, ArchiveError> {
        let stored = span.map(|span| {
            self.batch.stored_bytes += RECORD_HEADER_LEN + span.stored_len;
            self.batch.raw_bytes += size;
            self.batch.stored.insert(id);
            StoredAt {
                pack: String::new(),
                offset: span.offset,
                stored_len: span.stored_len,
            }
        });
        let added = if stored.is_some() {
            Added::New
        } else {
            Added::Duplicate
        };
        let entry = Entry {
            id,
            size,
            source,
            first_seen,
            flags,
            envelope,
            stored,
        };
        self.index
            .note_sighting(&entry.id, &entry.source, entry.first_seen);
        self.batch.entries.push(entry);
        match added {
            Added::New => self.totals.new_messages += 1,
            _ => self.totals.duplicates += 1,
        }
        if self.batch_due() {
            self.commit()?;
        }
        Ok(added)
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
        self.index.last_commit().saturating_add(1)
    }

    /// Whether this archive is encrypted (what is added is sealed to its key).
    pub fn is_encrypted(&self) -> bool {
        self.sealed.is_some()
    }

    /// Where this writer may keep files it needs for a while: uncommitted, removed by the next
    /// writer if this one dies. Plaintext, so for an encrypted archive on this host, not in it.
    pub fn scratch_dir(&self) -> PathBuf {
        match &self.sealed {
            Some(sealed) => sealed.host_cache_dir().join("scratch"),
            None => self.index.root().join("tmp"),
        }
    }

    /// The pack being written: in `tmp/` (an age file there, for an encrypted archive).
    fn tmp_pack_path(&self) -> PathBuf {
        let name = match self.sealed {
            Some(_) => format!("{:08}.pack.age", self.next_commit()),
            None => format!("{:08}.pack", self.next_commit()),
        };
        self.index.root().join("tmp").join(name)
    }

    fn open_pack(&mut self) -> Result<&mut PackWriter, ArchiveError> {
        if self.batch.pack.is_none() {
            let path = self.tmp_pack_path();
            // Left by a failed commit of this writer (under the lock, nobody else writes here).
            let _ = fs::remove_file(&path);
            let pack = match &self.sealed {
                None => PackWriter::create(path.clone(), self.level),
                Some(sealed) => {
                    PackWriter::create_sealed(path.clone(), self.scratch_dir(), self.level, sealed)
                }
            }
            .map_err(ArchiveError::io(&path))?;
            self.batch.pack = Some(pack);
        }
        Ok(self.batch.pack.as_mut().expect("just opened"))
    }

    /// Makes everything added so far durable and visible: seals the pack (re-checking it),
    /// writes the catalog segment, then the commit record, the commit point. Returns the commit
    /// number, or `None` when there was nothing to commit.
    pub fn commit(&mut self) -> Result<Option<u64>, ArchiveError> {
        let repairs = self.retired.len()
            + self.retired_segments.len()
            + self.retired_commits.len()
            + self.lost.len();
        if self.batch.entries.is_empty() && self.accounts.is_empty() && repairs == 0 {
            self.batch.opened = Instant::now();
            return Ok(None);
        }
        let number = self.next_commit();
        let root = self.index.root().to_path_buf();
        let tmp = root.join("tmp");
        let mut batch = std::mem::replace(&mut self.batch, Batch::new());
        let intent = root.join("commits").join(catalog::intent_file_name(number));
        if intent.exists() {
            // An earlier attempt at this number failed (a full disk, say) and left no record:
            // what it wrote goes first, or it would stay under a committed number.
            let record = root.join("commits").join(catalog::commit_file_name(number));
            if record.exists() {
                return Err(ArchiveError::io(&record)(io::Error::other(
                    "a commit record this writer did not see complete is there; run the command again",
                )));
            }
            remove_files_of(root.as_path(), &[number].into())?;
        } else {
            durable::write_once(&tmp, &intent, b"").map_err(ArchiveError::io(&intent))?;
        }
        let mut packs = Vec::new();
        if let Some(pack) = batch.pack.take() {
            let sealed = pack.seal(&root, &format!("{number:08}"))?;
            // Lines stored in this batch have no pack name yet; lines `repair` repeats keep theirs.
            for at in batch
                .entries
                .iter_mut()
                .filter_map(|e| e.stored.as_mut())
                .filter(|at| at.pack.is_empty())
            {
                at.pack = sealed.name.clone();
            }
            packs.push(FileRef {
                name: sealed.name,
                size: sealed.size,
                sha256: None,
            });
        }
        let segment_path = root
            .join("catalog")
            .join(catalog::segment_file_name(number));
        let mut segment =
            catalog::encode_segment(&batch.entries).map_err(ArchiveError::io(&segment_path))?;
        if let Some(sealed) = &self.sealed {
            segment = sealed.encrypt(&segment)?;
            // This host's envelope-less copy of the lines goes first: a record never names a
            // segment whose lines its writer could not read back without the identity.
            let lines: Vec<Entry> = batch
                .entries
                .iter()
                .map(|e| Entry {
                    envelope: Envelope::default(),
                    ..e.clone()
                })
                .collect();
            let host_copy =
                catalog::encode_segment(&lines).map_err(ArchiveError::io(&segment_path))?;
            let path = sealed.host_segment_path(number, &Digest::of(&segment));
            let dir = durable::parent_dir(&path);
            fs::create_dir_all(dir).map_err(ArchiveError::io(dir))?;
            let _ = fs::remove_file(&path);
            durable::write_once(&sealed.host_cache_dir().join("tmp"), &path, &host_copy)
                .map_err(ArchiveError::io(&path))?;
        }
        let segment_ref = FileRef {
            name: catalog::segment_file_name(number),
            size: segment.len() as u64,
            sha256: Some(Digest::of(&segment)),
        };
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
            retired_packs: std::mem::take(&mut self.retired),
            retired_segments: std::mem::take(&mut self.retired_segments),
            retired_commits: std::mem::take(&mut self.retired_commits),
            lost: std::mem::take(&mut self.lost),
            sealed: None,
        };
        let record_path = root.join("commits").join(catalog::commit_file_name(number));
        let text = match &self.sealed {
            None => serde_json::to_string_pretty(&record).expect("commit record serializes") + "\n",
            Some(sealed) => {
                // Accounts and lost messages name people and messages: only inside age, and
                // (for `status` on this host) in this host's cache, written before the record.
                let mut public = record.clone();
                public.format = super::crypto::ENCRYPTED_VERSION;
                let fields = catalog::SealedFields {
                    accounts: std::mem::take(&mut public.accounts),
                    lost: std::mem::take(&mut public.lost),
                };
                if let Some(sha256) = &record.segment.sha256 {
                    let path = sealed.host_fields_path(number, sha256);
                    let dir = durable::parent_dir(&path);
                    fs::create_dir_all(dir).map_err(ArchiveError::io(dir))?;
                    let _ = fs::remove_file(&path);
                    let text = serde_json::to_vec(&fields).expect("serializes");
                    durable::write_once(&sealed.host_cache_dir().join("tmp"), &path, &text)
                        .map_err(ArchiveError::io(&path))?;
                }
                public.sealed = Some(sealed.seal_json(&fields)?);
                let text = serde_json::to_string_pretty(&public).expect("commit record serializes");
                sealed.sign_record(&(text + "\n"))?
            }
        };
        durable::write_once(&tmp, &record_path, text.as_bytes())
            .map_err(ArchiveError::io(&record_path))?;
        // The record is the commit point; a marker left behind (failed removal, crash) is stale
        // and the next writer removes it.
        let _ = fs::remove_file(&intent);

        self.totals.commits += 1;
        self.totals.entries += record.entries;
        self.totals.raw_bytes = self.totals.raw_bytes.saturating_add(record.raw_bytes);
        self.totals.stored_bytes = self.totals.stored_bytes.saturating_add(record.stored_bytes);
        self.index.set_last_commit(number);
        for entry in &batch.entries {
            self.index.add(entry);
        }
        if let Some(publisher) = &mut self.publisher {
            publisher.enqueue(number)?;
        }
        Ok(Some(number))
    }

    /// Commits what is left and releases the lock.
    pub fn finish(mut self) -> Result<WriterTotals, ArchiveError> {
        self.commit()?;
        self.wait_uploaded()?;
        Ok(self.totals)
    }
}

/// Deletes what an interrupted writer left: everything in `tmp/`, and the segment and packs of
/// a commit number whose intent marker has no record (see `catalog::intent_file_name`). Nothing
/// else: files of a number without a record or a marker are committed data whose record was
/// lost, and `verify` reports them.
pub(crate) fn remove_uncommitted(root: &Path) -> Result<(), ArchiveError> {
    let tmp = root.join("tmp");
    for name in list_dir(&tmp)? {
        fs::remove_file(tmp.join(&name)).map_err(ArchiveError::io(tmp.join(&name)))?;
    }
    let commits = root.join("commits");
    let names = list_dir(&commits)?;
    let uncommitted = index::uncommitted_numbers(&names);
    if !uncommitted.is_empty() {
        remove_files_of(root, &uncommitted)?;
    }
    // Markers go last, once what they vouch for is gone; stale ones (with a record) too.
    for name in names.iter().filter(|name| name.ends_with(".pending")) {
        fs::remove_file(commits.join(name)).map_err(ArchiveError::io(commits.join(name)))?;
    }
    Ok(())
}

/// Deletes the `catalog/` and `packs/` files of the given commit numbers, durably.
fn remove_files_of(root: &Path, numbers: &BTreeSet<u64>) -> Result<(), ArchiveError> {
    for sub in ["catalog", "packs"] {
        let dir = root.join(sub);
        for name in list_dir(&dir)? {
            if catalog::commit_of_file_name(&name).is_some_and(|n| numbers.contains(&n)) {
                fs::remove_file(dir.join(&name)).map_err(ArchiveError::io(dir.join(&name)))?;
            }
        }
        durable::sync_dir(&dir).map_err(ArchiveError::io(&dir))?;
    }
    Ok(())
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
