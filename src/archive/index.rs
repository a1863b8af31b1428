//! Reading the committed catalog, and `Index`: the little a writer must know of it.
//!
//! `read_catalog` visits every catalog line of every commit in order; `Archive` keeps them all
//! (for `list`, `verify`...), `Index` keeps about 64 bytes a message: which ids are stored and
//! where, which (id, source) pairs are recorded, and per POP3 account which UIDLs are archived.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use super::ArchiveError;
use super::catalog::{self, CommitRecord, Entry, Source, StoredAt};
use super::compact_map::CompactMap;
use super::digest::Digest;
use super::pack::{self, RecordFault};

/// Where a message's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub pack: Arc<str>,
    pub offset: u64,
    pub stored_len: u64,
    pub size: u64,
}

impl Location {
    /// Whether the record header found at this location is the one the catalog promised.
    pub fn describes(&self, id: &Digest, header: &pack::RecordHeader) -> bool {
        header.id == *id && header.raw_len == self.size && header.stored_len == self.stored_len
    }

    /// Decompresses and re-hashes the message at this location of `file` (its pack), and
    /// returns its record's header.
    pub fn check(
        &self,
        id: &Digest,
        file: &mut (impl Read + Seek),
    ) -> Result<pack::RecordHeader, RecordFault> {
        self.checked_record(id, file, 0).map(|(header, _)| header)
    }

    /// Like [`Location::check`], and returns the message's first `limit` bytes.
    pub fn check_keeping_head(
        &self,
        id: &Digest,
        file: &mut (impl Read + Seek),
        limit: usize,
    ) -> Result<Vec<u8>, RecordFault> {
        self.checked_record(id, file, limit).map(|(_, head)| head)
    }

    fn checked_record(
        &self,
        id: &Digest,
        file: &mut (impl Read + Seek),
        limit: usize,
    ) -> Result<(pack::RecordHeader, Vec<u8>), RecordFault> {
        let header = pack::read_record_header(file, self.offset)?;
        if !self.describes(id, &header) {
            return Err(RecordFault::Mismatch);
        }
        let mut stored = BufReader::new(&mut *file).take(self.stored_len);
        let head = pack::RecordCodec::check_keeping_head(&header, &mut stored, limit)?;
        Ok((header, head))
    }
}

/// The fields of a catalog line that say where a message is and where it was seen: what the
/// writers' [`Index`] reads. Reading only these skips the envelope, which [`Entry`] takes
/// through `#[serde(flatten)]`, for which serde buffers every field of the line first (several
/// times slower, at a million lines seconds). A line whose other fields are unreadable still
/// counts here (its message is not stored again); `verify` reads lines whole and reports it.
#[derive(Debug, serde::Deserialize)]
pub struct Sighting {
    pub id: Digest,
    pub size: u64,
    pub source: Source,
    pub first_seen: DateTime<Utc>,
    #[serde(default)]
    pub stored: Option<StoredAt>,
}

impl From<Entry> for Sighting {
    fn from(entry: Entry) -> Sighting {
        Sighting {
            id: entry.id,
            size: entry.size,
            source: entry.source,
            first_seen: entry.first_seen,
            stored: entry.stored,
        }
    }
}

/// A catalog line as one reader wants it: the whole [`Entry`] or its [`Sighting`].
pub trait Line: serde::de::DeserializeOwned {
    fn stored(&self) -> Option<&StoredAt>;
}

impl Line for Entry {
    fn stored(&self) -> Option<&StoredAt> {
        self.stored.as_ref()
    }
}

impl Line for Sighting {
    fn stored(&self) -> Option<&StoredAt> {
        self.stored.as_ref()
    }
}

/// What reading the commit records found, besides the lines themselves.
pub struct CatalogRead {
    pub commits: Vec<CommitRecord>,
    /// Damage found while reading (unreadable records, segments or lines); `verify` reports it.
    pub issues: Vec<String>,
    /// The highest commit number on disk (of a record, or of a catalog or pack file), readable
    /// or not, leaving out `uncommitted`.
    pub last_commit: u64,
    /// Numbers of an interrupted writer: an intent marker above every record.
    pub uncommitted: std::collections::BTreeSet<u64>,
    /// Packs retired by `repair`: catalog locations in them are void.
    pub retired: std::collections::HashSet<String>,
    /// Segments retired by `repair` (their readable lines were recorded again): not read.
    pub retired_segments: std::collections::HashSet<String>,
}

/// Whether `line` is where its message's bytes are: it names a location outside the packs
/// `repair` retired (`retired`, from [`CatalogRead`]). Of several such lines for one id, the
/// last read wins; a line in a retired pack still counts as a sighting.
pub fn stores_bytes(line: &impl Line, retired: &std::collections::HashSet<String>) -> bool {
    line.stored().is_some_and(|at| !retired.contains(&at.pack))
}

/// Calls `visit` with every readable catalog line of every commit, in commit order.
pub fn read_catalog(
    root: &Path,
    visit: &mut dyn FnMut(Entry),
) -> Result<CatalogRead, ArchiveError> {
    let mut read = read_records(root)?;
    visit_segments(root, &mut read, &|_| true, visit)?;
    Ok(read)
}

/// Calls `visit` with every readable line of the segments of the commits `wanted` picks, in
/// commit order (retired segments are never read).
pub fn visit_segments<L: Line>(
    root: &Path,
    read: &mut CatalogRead,
    wanted: &dyn Fn(&CommitRecord) -> bool,
    visit: &mut dyn FnMut(L),
) -> Result<(), ArchiveError> {
    for record in &read.commits {
        if !read.retired_segments.contains(&record.segment.name) && wanted(record) {
            read_segment(root, record, &mut read.issues, visit)?;
        }
    }
    Ok(())
}

/// Reads the commit records, and what `repair` retired (segments whose readable lines it
/// re-recorded, commit records it found unreadable, packs it salvaged), before any segment is
/// read ([`visit_segments`]).
pub fn read_records(root: &Path) -> Result<CatalogRead, ArchiveError> {
    // Files first, then records: a writer makes its intent marker durable before any file of
    // its commit appears, and removes it only after the record, so a reader listing in this
    // order sees a marker or a record for every file it saw (no false "missing record").
    let mut file_numbers = Vec::new();
    for sub in ["catalog", "packs"] {
        for name in list_dir(&root.join(sub))? {
            if let Some(n) = catalog::commit_of_file_name(&name) {
                file_numbers.push((n, format!("{sub}/{name}")));
            }
        }
    }
    let commits_dir = root.join("commits");
    let names = list_dir(&commits_dir)?;
    let numbers = commit_records(&names);
    let last_record = numbers.last().map_or(0, |(n, _)| *n);
    let uncommitted = uncommitted_numbers(&names);
    // Files of a number above every record, without an intent marker, are committed data whose
    // records were lost: their numbers count, so they show up as missing records (and no
    // writer reuses them). A number far above any a writer could have reached is a stray
    // name, reported but not counted.
    let mut highest_file = 0;
    let mut issues = Vec::new();
    for (n, rel) in file_numbers {
        if uncommitted.contains(&n) {
            continue;
        }
        if n > last_record.saturating_add(MAX_COMMIT_GAP) {
            issues.push(format!(
                "{rel} has an implausible commit number; it is not popvault's (move it away)"
            ));
        } else {
            highest_file = highest_file.max(n);
        }
    }
    let mut read = CatalogRead {
        commits: Vec::new(),
        issues,
        last_commit: last_record.max(highest_file),
        uncommitted,
        retired: Default::default(),
        retired_segments: Default::default(),
    };
    let mut unreadable = Vec::new();
    let sealed = super::crypto::sealed(root)?;
    for (number, name) in &numbers {
        let bytes = fs::read(commits_dir.join(name)).map_err(|e| e.to_string());
        if let (Some(sealed), Ok(bytes)) = (&sealed, &bytes)
            && let Err(reason) = sealed.verify_record(bytes)
        {
            return Err(ArchiveError::Unsigned {
                archive: root.display().to_string(),
                name: name.clone(),
                reason,
            });
        }
        let mut record = bytes
            .and_then(|b| serde_json::from_slice::<CommitRecord>(&b).map_err(|e| e.to_string()));
        if let (Some(sealed), Ok(record)) = (&sealed, &mut record)
            && let Some(fields) = &record.sealed
        {
            // With the identity from the record; without, from what this host wrote.
            let fields: catalog::SealedFields = match sealed.can_decrypt() {
                true => {
                    let fields: catalog::SealedFields = sealed.open_json(fields)?;
                    // What a writer on this host needs later without the identity.
                    if let Some(sha) = &record.segment.sha256 {
                        let text = serde_json::to_vec(&fields).expect("serializes");
                        sealed.keep_host_copy(&sealed.host_fields_path(record.commit, sha), &text);
                    }
                    fields
                }
                false => record
                    .segment
                    .sha256
                    .and_then(|sha| fs::read(sealed.host_fields_path(record.commit, &sha)).ok())
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .unwrap_or_default(),
            };
            record.accounts = fields.accounts;
            record.lost = fields.lost;
        }
        match record {
            Ok(record) if record.commit == *number => read.commits.push(record),
            Ok(_) => unreadable.push((
                *number,
                format!("commit record {name} names another commit number"),
            )),
            Err(e) => {
                unreadable.push((*number, format!("commit record {name} is unreadable: {e}")))
            }
        }
    }
    let retired_commits: std::collections::HashSet<u64> = read
        .commits
        .iter()
        .flat_map(|c| c.retired_commits.iter().copied())
        .collect();
    read.retired_segments = read
        .commits
        .iter()
        .flat_map(|c| c.retired_segments.iter().cloned())
        .collect();
    read.issues.extend(
        unreadable
            .into_iter()
            .filter(|(n, _)| !retired_commits.contains(n))
            .map(|(_, issue)| issue),
    );
    // Counted, not listed: a stray number can make the range huge.
    let accounted: std::collections::BTreeSet<u64> = numbers
        .iter()
        .map(|(n, _)| *n)
        .chain(retired_commits.iter().copied())
        .filter(|n| (1..=read.last_commit).contains(n))
        .collect();
    let missing = read.last_commit - accounted.len() as u64;
    if missing > 0 {
        let first = (1..).find(|n| !accounted.contains(n)).unwrap_or(1);
        let last = (1..=read.last_commit)
            .rev()
            .find(|n| !accounted.contains(n))
            .unwrap_or(read.last_commit);
        read.issues.push(format!(
            "{missing} commit records between {first:08} and {last:08} are missing"
        ));
    }
    read.retired = read
        .commits
        .iter()
        .flat_map(|c| c.retired_packs.iter().cloned())
        .collect();
    Ok(read)
}

fn read_segment<L: Line>(
    root: &Path,
    record: &CommitRecord,
    issues: &mut Vec<String>,
    visit: &mut dyn FnMut(L),
) -> Result<(), ArchiveError> {
    let name = &record.segment.name;
    let sealed = super::crypto::sealed(root)?;
    if let Some(sealed) = sealed.as_ref().filter(|s| !s.can_decrypt()) {
        // Without the identity, a writer reads back the lines it wrote, as it kept them.
        let Some(sha256) = &record.segment.sha256 else {
            return Err(sealed.no_host_cache(record.commit).into());
        };
        let path = sealed.host_segment_path(record.commit, sha256);
        let bytes = fs::read(&path).map_err(|_| sealed.no_host_cache(record.commit))?;
        return visit_lines(name, &bytes, issues, visit);
    }
    let path = root.join("catalog").join(name);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            issues.push(format!("catalog segment {name} is missing"));
            return Ok(());
        }
        Err(e) => return Err(ArchiveError::io(&path)(e)),
    };
    if bytes.len() as u64 != record.segment.size
        || Some(Digest::of(&bytes)) != record.segment.sha256
    {
        if sealed.is_some() {
            // Of an encrypted segment nothing can be trusted but what its record vouches for.
            issues.push(format!(
                "catalog segment {name} is damaged or replaced (its size or SHA-256 differs from commit {:08}); it is not read",
                record.commit
            ));
            return Ok(());
        }
        issues.push(format!(
            "catalog segment {name} is damaged (its size or SHA-256 differs from commit {:08}); readable lines are used",
            record.commit
        ));
    }
    let bytes = match &sealed {
        Some(sealed) => {
            let plain = sealed.decrypt(&bytes, &format!("catalog segment {name}"))?;
            keep_host_segment(sealed, record, &plain);
            plain
        }
        None => bytes,
    };
    visit_lines(name, &bytes, issues, visit)
}

/// A run with the identity puts back in this host's cache the envelope-less lines of a
/// verified segment, where they are missing (written on another host, or the cache deleted),
/// so that writers here need no identity again.
fn keep_host_segment(sealed: &super::crypto::Sealed, record: &CommitRecord, plain: &[u8]) {
    let Some(sha256) = &record.segment.sha256 else {
        return;
    };
    let path = sealed.host_segment_path(record.commit, sha256);
    if path.exists() {
        return;
    }
    let (text, _) = catalog::decode_segment(plain);
    let lines: Vec<Entry> = text
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Entry>(line).ok())
        .map(|entry| Entry {
            envelope: Default::default(),
            ..entry
        })
        .collect();
    if let Ok(bytes) = catalog::encode_segment(&lines) {
        sealed.keep_host_copy(&path, &bytes);
    }
}

/// Reads the lines of a segment's (zstd) bytes, reporting what cannot be read.
fn visit_lines<L: Line>(
    name: &str,
    bytes: &[u8],
    issues: &mut Vec<String>,
    visit: &mut dyn FnMut(L),
) -> Result<(), ArchiveError> {
    let (text, problems) = catalog::decode_segment(bytes);
    issues.extend(
        problems
            .into_iter()
            .map(|p| format!("catalog segment {name}: {p}")),
    );
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<L>(line) {
            Ok(entry) => visit(entry),
            Err(e) => issues.push(format!(
                "catalog segment {name} line {} is unreadable: {e}",
                n + 1
            )),
        }
    }
    Ok(())
}

pub(crate) fn list_dir(dir: &Path) -> Result<Vec<String>, ArchiveError> {
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

/// How far above the last commit record a file's commit number may be and still count as the
/// archive's (records lost in a row); beyond, the name is taken for a stray.
const MAX_COMMIT_GAP: u64 = 1_000_000;

/// The commit records among the names in `commits/`, by number.
fn commit_records(commit_dir_names: &[String]) -> Vec<(u64, String)> {
    let mut records: Vec<(u64, String)> = commit_dir_names
        .iter()
        .filter(|name| name.ends_with(".json"))
        .filter_map(|name| Some((catalog::commit_of_file_name(name)?, name.clone())))
        .collect();
    records.sort();
    records
}

/// The commit numbers an interrupted writer left, from the names in `commits/`: intent markers
/// above the last record (a writer commits in order, so only its last number can be open).
pub(crate) fn uncommitted_numbers(commit_dir_names: &[String]) -> std::collections::BTreeSet<u64> {
    let last_record = commit_records(commit_dir_names)
        .last()
        .map_or(0, |(n, _)| *n);
    commit_dir_names
        .iter()
        .filter(|name| name.ends_with(".pending"))
        .filter_map(|name| catalog::commit_of_file_name(name))
        .filter(|n| *n > last_record)
        .collect()
}

/// What the archive holds under a POP3 account's UIDL: the message and when it was first
/// archived from there. A server that reuses UIDLs can put several messages under one; the one
/// first archived last is the one the UIDL stands for now.
#[derive(Debug, Clone, Copy)]
pub struct Pop3Seen {
    pub first_seen: DateTime<Utc>,
    pub id: Digest,
    /// What LIST said of it, when that differs from its size (see [`Source::Pop3`]).
    pub list_size: Option<u64>,
}

/// A POP3 [`Pop3Seen`] in 56 bytes (an `Option<u64>` would make it 64).
#[derive(Clone, Copy)]
struct PackedSeen {
    id: Digest,
    first_seen: DateTime<Utc>,
    list_size: u64,
    has_list_size: bool,
}

impl PackedSeen {
    fn pack(seen: Pop3Seen) -> PackedSeen {
        PackedSeen {
            id: seen.id,
            first_seen: seen.first_seen,
            list_size: seen.list_size.unwrap_or(0),
            has_list_size: seen.list_size.is_some(),
        }
    }

    fn unpack(self) -> Pop3Seen {
        Pop3Seen {
            first_seen: self.first_seen,
            id: self.id,
            list_size: self.has_list_size.then_some(self.list_size),
        }
    }
}

/// A fixed-size key for a UIDL of one account: 128 bits of its SHA-256. Two UIDLs of one
/// account would need a 2^64-work collision to share one (and a message wrongly taken for
/// archived is still never deleted unproven: deletion compares the server's header first).
pub type UidlKey = [u64; 2];

pub fn uidl_key(uidl: &str) -> UidlKey {
    let h = Sha256::digest(uidl.as_bytes());
    let half = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("8 bytes"));
    [half(&h[..8]), half(&h[8..16])]
}

/// A fixed-size key for an (id, source) pair: 128 bits of SHA-256 over the id and the source's
/// JSON. A false match would need a 2^64-work collision among one archive's own lines.
/// (An integer: compared without a call to `memcmp`.)
type SightingKey = u128;

fn sighting_key(id: &Digest, source: &Source) -> SightingKey {
    let mut h = Sha256::new();
    h.update(id.0);
    h.update(serde_json::to_vec(source).expect("sources serialize"));
    u128::from_ne_bytes(h.finalize()[..16].try_into().expect("16 of 32 bytes"))
}

/// An id as integers, the key of [`Index::stored`] (compared without a call to `memcmp`).
pub(crate) type IdKey = [u128; 2];

pub(crate) fn id_key(id: &Digest) -> IdKey {
    let (high, low) = id.0.split_at(16);
    let half = |b: &[u8]| u128::from_ne_bytes(b.try_into().expect("16 bytes"));
    [half(high), half(low)]
}

pub(crate) fn digest_of(key: &IdKey) -> Digest {
    let mut id = [0; 32];
    id[..16].copy_from_slice(&key[0].to_ne_bytes());
    id[16..].copy_from_slice(&key[1].to_ne_bytes());
    Digest(id)
}

/// A [`Location`] in 16 bytes: the pack by its number in [`Index::packs`]. One whose numbers do
/// not fit (a pack or message past 4 GiB) is kept whole in [`Index::wide`], marked by [`WIDE`].
#[derive(Clone, Copy)]
struct PackedLocation {
    pack: u32,
    offset: u32,
    stored_len: u32,
    size: u32,
}

const WIDE: u32 = u32::MAX;

/// The writer's compact view of the committed archive: at a million messages, about 64 bytes
/// each (a 48-byte location and a 16-byte sighting key), and 72 for each archived UIDL.
pub struct Index {
    root: PathBuf,
    last_commit: u64,
    stored: CompactMap<IdKey, PackedLocation>,
    wide: HashMap<IdKey, Location>,
    sightings: CompactMap<SightingKey, ()>,
    pop3: HashMap<String, CompactMap<UidlKey, PackedSeen>>,
    packs: Vec<Arc<str>>,
    pack_numbers: HashMap<Arc<str>, u32>,
}

impl Index {
    /// The index of an archive that does not exist yet.
    pub fn empty(root: &Path) -> Index {
        Index {
            root: root.to_path_buf(),
            last_commit: 0,
            stored: CompactMap::default(),
            wide: HashMap::new(),
            sightings: CompactMap::default(),
            pop3: HashMap::new(),
            packs: Vec::new(),
            pack_numbers: HashMap::new(),
        }
    }

    /// Reads the catalog of the archive at `root` (its header must have been checked).
    pub fn load(root: &Path) -> Result<Index, ArchiveError> {
        Ok(Self::read(root, true, &mut |_, _| {})?.0)
    }

    /// Reads only where each message is stored (not the sightings and UIDLs a writer needs),
    /// and calls `visit` with each catalog line and whether it is the one that stores the
    /// message's bytes; returns what reading the records found too.
    pub fn load_locations(
        root: &Path,
        visit: &mut dyn FnMut(&Sighting, bool),
    ) -> Result<(Index, CatalogRead), ArchiveError> {
        Self::read(root, false, visit)
    }

    fn read(
        root: &Path,
        sightings: bool,
        visit: &mut dyn FnMut(&Sighting, bool),
    ) -> Result<(Index, CatalogRead), ArchiveError> {
        let mut index = Index::empty(root);
        let mut read = read_records(root)?;
        let retired = read.retired.clone();
        let mut on_line = |line: Sighting| {
            let stores = stores_bytes(&line, &retired);
            if sightings {
                index.note_sighting(&line.id, &line.source, line.first_seen);
            }
            if let Some(at) = line.stored.as_ref().filter(|_| stores) {
                index.note_location(&line.id, line.size, at);
            }
            visit(&line, stores);
        };
        if sightings {
            visit_segments(root, &mut read, &|_| true, &mut on_line)?;
        } else {
            // `verify` reads each line whole, so that a line `Archive` cannot read (and
            // `restore` would leave out) is reported, not taken for a good location.
            visit_segments(root, &mut read, &|_| true, &mut |entry: Entry| {
                on_line(entry.into())
            })?;
        }
        index.last_commit = read.last_commit;
        Ok((index, read))
    }

    /// Records a committed catalog line.
    pub(crate) fn add(&mut self, entry: &Entry) {
        self.note_sighting(&entry.id, &entry.source, entry.first_seen);
        if let Some(at) = &entry.stored {
            self.note_location(&entry.id, entry.size, at);
        }
    }

    fn note_location(&mut self, id: &Digest, size: u64, at: &StoredAt) {
        let pack = self.pack_number(&at.pack);
        let narrow = |n: u64| u32::try_from(n).ok().filter(|&n| n != WIDE);
        let packed = match (narrow(at.offset), narrow(at.stored_len), narrow(size)) {
            (Some(offset), Some(stored_len), Some(size)) if pack != WIDE => {
                self.wide.remove(&id_key(id));
                PackedLocation {
                    pack,
                    offset,
                    stored_len,
                    size,
                }
            }
            _ => {
                let location = Location {
                    pack: at.pack.as_str().into(),
                    offset: at.offset,
                    stored_len: at.stored_len,
                    size,
                };
                self.wide.insert(id_key(id), location);
                PackedLocation {
                    pack: WIDE,
                    offset: 0,
                    stored_len: 0,
                    size: 0,
                }
            }
        };
        // The last line that stored an id wins: `repair` stores salvaged bytes again.
        self.stored.insert(id_key(id), packed);
    }

    /// Records that `entry`'s source was seen (for the writer's open batch, before its bytes
    /// have a pack). Recording a line twice changes nothing.
    pub(crate) fn note_sighting(
        &mut self,
        id: &Digest,
        source: &Source,
        first_seen: DateTime<Utc>,
    ) {
        self.sightings.insert(sighting_key(id, source), ());
        if let Source::Pop3 {
            account,
            uidl: Some(uidl),
            list_size,
        } = source
        {
            let seen = Pop3Seen {
                first_seen,
                id: *id,
                list_size: *list_size,
            };
            let by_uidl = match self.pop3.get_mut(account.as_str()) {
                Some(by_uidl) => by_uidl,
                None => self.pop3.entry(account.clone()).or_default(),
            };
            let key = uidl_key(uidl);
            let now = match by_uidl.get(&key).map(|packed| packed.unpack()) {
                None => seen,
                Some(mut slot) if slot.id == *id => {
                    slot.first_seen = slot.first_seen.min(first_seen);
                    slot.list_size = *list_size;
                    slot
                }
                // A reused UIDL: the message archived later is the one it names now. Decided
                // by date, not by reading order, which `repair` changes.
                Some(slot) if first_seen > slot.first_seen => seen,
                Some(slot) => slot,
            };
            by_uidl.insert(key, PackedSeen::pack(now));
        }
    }

    fn pack_number(&mut self, pack: &str) -> u32 {
        // Lines come in runs of one pack: no hashing of its name for most.
        if self.packs.last().is_some_and(|last| **last == *pack) {
            return (self.packs.len() - 1) as u32;
        }
        if let Some(&n) = self.pack_numbers.get(pack) {
            return n;
        }
        let n = u32::try_from(self.packs.len()).unwrap_or(WIDE);
        if n != WIDE {
            let name: Arc<str> = pack.into();
            self.packs.push(name.clone());
            self.pack_numbers.insert(name, n);
        }
        n
    }

    /// Forgets every location in `pack` (retired by `repair`).
    pub(crate) fn void_pack(&mut self, pack: &str) {
        self.void_packs(&|name| name == pack);
    }

    fn void_packs(&mut self, retired: &dyn Fn(&str) -> bool) {
        self.wide.retain(|_, location| !retired(&location.pack));
        let (packs, wide) = (&self.packs, &self.wide);
        self.stored.retain(|id, location| match location.pack {
            WIDE => wide.contains_key(id),
            n => !retired(&packs[n as usize]),
        });
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn last_commit(&self) -> u64 {
        self.last_commit
    }

    pub(crate) fn set_last_commit(&mut self, commit: u64) {
        self.last_commit = commit;
    }

    /// How many messages have their bytes stored.
    pub fn stored_count(&self) -> usize {
        self.stored.len()
    }

    /// Every stored message, by pack and in offset order within each, as positions for
    /// [`Index::stored_at`]: 8 bytes a message. Good until the index next changes.
    pub fn stored_by_pack(&mut self) -> Vec<(Arc<str>, Vec<usize>)> {
        self.stored.settle();
        let mut by_pack: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for position in 0..self.stored.settled().len() {
            let (_, location) = self.stored_at(position);
            by_pack.entry(location.pack).or_default().push(position);
        }
        let mut packs: Vec<(Arc<str>, Vec<usize>)> = by_pack.into_iter().collect();
        for (_, positions) in &mut packs {
            positions.sort_unstable_by_key(|&p| self.stored_at(p).1.offset);
        }
        packs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        packs
    }

    /// The message at `position` of [`Index::stored_by_pack`].
    pub fn stored_at(&self, position: usize) -> (Digest, Location) {
        let (key, _) = self.stored.settled()[position];
        let id = digest_of(&key);
        let location = self.location(&id).expect("a settled position is stored");
        (id, location)
    }

    pub fn has_bytes(&self, id: &Digest) -> bool {
        self.stored.contains_key(&id_key(id))
    }

    pub fn knows(&self, id: &Digest, source: &Source) -> bool {
        self.sightings.contains_key(&sighting_key(id, source))
    }

    /// The archived UIDLs of a POP3 account, by [`uidl_key`].
    pub fn uidls(&self, account: &str) -> impl Iterator<Item = (UidlKey, Pop3Seen)> + '_ {
        self.pop3
            .get(account)
            .into_iter()
            .flat_map(|by_uidl| by_uidl.iter().map(|(k, v)| (*k, v.unpack())))
    }

    pub fn location(&self, id: &Digest) -> Option<Location> {
        let packed = self.stored.get(&id_key(id))?;
        if packed.pack == WIDE {
            return self.wide.get(&id_key(id)).cloned();
        }
        Some(Location {
            pack: self.packs[packed.pack as usize].clone(),
            offset: packed.offset.into(),
            stored_len: packed.stored_len.into(),
            size: packed.size.into(),
        })
    }

    /// What the archive holds under `uidl` of POP3 account `account`.
    pub fn pop3_seen(&self, account: &str, uidl: &str) -> Option<Pop3Seen> {
        let packed = self.pop3.get(account)?.get(&uidl_key(uidl))?;
        Some(packed.unpack())
    }

    /// Re-reads and re-hashes the archived copy of `id`.
    pub fn check_message(&self, id: &Digest) -> Result<(), RecordFault> {
        self.verified_head(id, 0).map(drop)
    }

    /// Re-reads and re-hashes the archived copy of `id`, and returns its first `limit` bytes.
    pub fn verified_head(&self, id: &Digest, limit: usize) -> Result<Vec<u8>, RecordFault> {
        let location = self.location(id).ok_or(RecordFault::Mismatch)?;
        let mut file = super::crypto::PackFile::open(&self.root, &location.pack)?;
        location.check_keeping_head(id, &mut file, limit)
    }
}

// The sizes the memory figures in the comments above count on.
const _: () = assert!(std::mem::size_of::<(UidlKey, PackedSeen)>() == 72);
const _: () = assert!(std::mem::size_of::<(IdKey, PackedLocation)>() == 48);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::catalog::StoredAt;
    use crate::archive::envelope::Envelope;

    fn stored_line(id: u8, pack: &str, offset: u64, size: u64) -> Entry {
        Entry {
            id: Digest([id; 32]),
            size,
            source: Source::Eml {
                path: format!("/m/{id}"),
            },
            first_seen: Utc::now(),
            flags: None,
            envelope: Envelope::default(),
            stored: Some(StoredAt {
                pack: pack.into(),
                offset,
                stored_len: size / 2,
            }),
        }
    }

    #[test]
    fn locations_past_4_gib_are_kept_whole_and_the_last_line_wins() {
        let mut index = Index::empty(Path::new("/nowhere"));
        let big = 5 << 30;
        index.add(&stored_line(1, "a.pack", big, 10));
        index.add(&stored_line(2, "a.pack", 7, big));
        index.add(&stored_line(3, "b.pack", 9, 20));
        let at = |index: &Index, id| index.location(&Digest([id; 32]));
        assert_eq!(at(&index, 1).map(|l| l.offset), Some(big));
        assert_eq!(
            at(&index, 2).map(|l| (l.size, l.stored_len)),
            Some((big, big / 2))
        );
        assert_eq!(
            at(&index, 3).map(|l| (l.pack.to_string(), l.offset)),
            Some(("b.pack".into(), 9))
        );
        // Stored again (as `repair` does), now in 32 bits: the wide copy is gone.
        index.add(&stored_line(1, "b.pack", 11, 10));
        assert_eq!(at(&index, 1).map(|l| l.offset), Some(11));
        assert!(index.wide.len() == 1);
        index.void_pack("a.pack");
        assert!(at(&index, 2).is_none());
        assert!(index.wide.is_empty());
        assert!(at(&index, 1).is_some() && at(&index, 3).is_some());
        index.void_pack("b.pack");
        assert!(at(&index, 1).is_none() && at(&index, 3).is_none());
    }
}
