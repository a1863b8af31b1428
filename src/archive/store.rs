//! `Archive`: a read-only view of everything committed, for listing, reading and verifying.
//! Opening never writes and never waits for a writer.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ArchiveError;
use super::catalog::{CommitRecord, Entry, FORMAT_VERSION, Source};
use super::crypto::PackFile;
use super::digest::Digest;
use super::durable;
use super::envelope::Envelope;
use super::index::{Location, read_catalog};
use super::pack::{self, RECORD_HEADER_LEN, RecordFault};

pub(crate) const HEADER_FILE: &str = "popvault-archive.json";
const FORMAT_NAME: &str = "popvault-archive";

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    created: DateTime<Utc>,
    /// Present exactly in an encrypted archive (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption: Option<super::crypto::Encryption>,
}

/// Turns a fault of the record at `loc` into the error that names the message and its pack.
fn damaged<'a>(id: &'a Digest, loc: &'a Location) -> impl Fn(RecordFault) -> ArchiveError + 'a {
    move |fault| ArchiveError::DamagedMessage {
        id: *id,
        pack: loc.pack.to_string(),
        fault,
    }
}

/// Whether `root` has an archive header (of any version).
pub fn is_archive(root: &Path) -> bool {
    root.join(HEADER_FILE).exists()
}

/// Checks the header: an archive of this format, of a version this popvault reads.
pub fn check_header(root: &Path) -> Result<(), ArchiveError> {
    read_header(root).map(|_| ())
}

/// The header's `encryption`: `None` for a plain archive.
pub(crate) fn read_encryption(
    root: &Path,
) -> Result<Option<super::crypto::Encryption>, ArchiveError> {
    read_header(root).map(|h| h.encryption)
}

fn read_header(root: &Path) -> Result<Header, ArchiveError> {
    if root.is_file() {
        return Err(ArchiveError::IsAFile {
            path: root.to_path_buf(),
        });
    }
    let header_path = root.join(HEADER_FILE);
    let text = match fs::read_to_string(&header_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let empty = fs::read_dir(root).is_ok_and(|mut d| d.next().is_none());
            return Err(if root.is_dir() && !empty {
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
    if header.version > super::crypto::ENCRYPTED_VERSION {
        return Err(ArchiveError::TooNew {
            path: root.to_path_buf(),
            version: header.version,
            supported: super::crypto::ENCRYPTED_VERSION,
        });
    }
    if let Some(encryption) = &header.encryption {
        encryption
            .check()
            .map_err(|reason| ArchiveError::BadHeader {
                path: header_path.clone(),
                reason,
            })?;
    }
    // Version 2 is the encrypted format: a reader must never take it for a plain archive.
    if (header.version == super::crypto::ENCRYPTED_VERSION) != header.encryption.is_some() {
        return Err(ArchiveError::BadHeader {
            path: header_path,
            reason: "its version and its encryption disagree".into(),
        });
    }
    Ok(header)
}

/// One unique message (one id) with every source it was seen in.
#[derive(Debug, Clone, Serialize)]
pub struct Message<'a> {
    pub id: Digest,
    pub size: u64,
    pub first_seen: DateTime<Utc>,
    /// The message's date as every command uses it ([`Envelope::message_time`]).
    pub time: DateTime<Utc>,
    #[serde(flatten)]
    pub envelope: &'a Envelope,
    pub sources: Vec<&'a Source>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<&'a str>,
}

impl<'a> Message<'a> {
    /// The message as its first catalog line shows it, with the envelope of the line that
    /// stored its bytes; [`Message::merge`] adds the other lines.
    fn first(line: &'a Entry, stored: &'a Entry) -> Message<'a> {
        Message {
            id: line.id,
            size: line.size,
            first_seen: line.first_seen,
            time: stored.envelope.message_time(line.first_seen),
            envelope: &stored.envelope,
            sources: vec![&line.source],
            flags: line.flags.as_deref(),
        }
    }

    /// Adds a later catalog line of the same message: the earliest first_seen, every source
    /// once, the first flags recorded.
    fn merge(&mut self, line: &'a Entry) {
        self.first_seen = self.first_seen.min(line.first_seen);
        if !self.sources.contains(&&line.source) {
            self.sources.push(&line.source);
        }
        if self.flags.is_none() {
            self.flags = line.flags.as_deref();
        }
        self.time = self.envelope.message_time(self.first_seen);
    }

    /// The message from the line that stored its bytes and all its lines, in catalog order.
    pub fn from_lines(stored: &'a Entry, lines: &'a [Entry]) -> Message<'a> {
        let mut lines = lines.iter();
        let mut m = Message::first(lines.next().unwrap_or(stored), stored);
        lines.for_each(|line| m.merge(line));
        m
    }
}

/// Reads messages out of an archive's packs, given where they are (from the catalog or the
/// local index). Packs stay open between calls (sealed packs never change).
pub struct PackReader {
    root: PathBuf,
    open_packs: std::sync::Mutex<HashMap<String, (OpenPack, u64)>>,
}

/// A pack kept open by a [`PackReader`], with its (plaintext) length.
#[derive(Clone)]
enum OpenPack {
    /// Read at positions, so that threads share it.
    Plain(std::sync::Arc<File>),
    /// An age file decrypts as a stream: one reader at a time.
    Sealed(std::sync::Arc<std::sync::Mutex<PackFile>>),
}

impl PackReader {
    pub fn new(root: &Path) -> PackReader {
        PackReader {
            root: root.to_path_buf(),
            open_packs: Default::default(),
        }
    }

    /// Streams message `id` to `out`, after first checking that it decompresses to exactly its
    /// id: nothing is written for a damaged message. Memory stays bounded whatever its size.
    pub fn copy(
        &self,
        id: &Digest,
        loc: &Location,
        out: &mut dyn Write,
    ) -> Result<(), ArchiveError> {
        let damaged = damaged(id, loc);
        let path = self.root.join("packs").join(&*loc.pack);
        let mut file =
            PackFile::open(&self.root, &loc.pack).map_err(|e| damaged(RecordFault::Io(e)))?;
        let header = loc.check(id, &mut file).map_err(&damaged)?;
        file.seek(SeekFrom::Start(
            loc.offset.saturating_add(RECORD_HEADER_LEN),
        ))
        .map_err(ArchiveError::io(&path))?;
        let mut stored = BufReader::new(file).take(loc.stored_len);
        pack::RecordCodec::open(&header, &mut stored, out).map_err(|fault| match fault {
            RecordFault::Output(source) => ArchiveError::Output { id: *id, source },
            fault => damaged(fault),
        })
    }

    /// Checks that message `id` at `loc` decompresses to exactly its id, streaming it (memory
    /// stays bounded whatever its size).
    pub fn check(&self, id: &Digest, loc: &Location) -> Result<(), RecordFault> {
        let mut file = PackFile::open(&self.root, &loc.pack)?;
        loc.check(id, &mut file).map(drop)
    }

    /// Reads a whole message into memory, decompressing it once and checking its SHA-256 before
    /// handing the bytes out. Packs stay open between calls (positioned reads, so threads share
    /// them).
    pub fn read(&self, id: &Digest, loc: &Location) -> Result<Vec<u8>, ArchiveError> {
        use std::os::unix::fs::FileExt;
        let damaged = damaged(id, loc);
        let (file, pack_len) = self
            .open_pack(&loc.pack)
            .map_err(|e| damaged(RecordFault::Io(e)))?;
        // The catalog line is checked against the pack before its length sizes a buffer.
        let record_len = RECORD_HEADER_LEN.saturating_add(loc.stored_len);
        if loc.offset.saturating_add(record_len) > pack_len {
            return Err(damaged(RecordFault::Mismatch));
        }
        let mut record = vec![0u8; record_len as usize];
        match file {
            OpenPack::Plain(file) => file.read_exact_at(&mut record, loc.offset),
            OpenPack::Sealed(reader) => {
                let mut reader = reader.lock().unwrap_or_else(|e| e.into_inner());
                reader
                    .seek(SeekFrom::Start(loc.offset))
                    .and_then(|_| reader.read_exact(&mut record))
            }
        }
        .map_err(|e| damaged(RecordFault::Io(e)))?;
        let (head, stored) = record.split_at(RECORD_HEADER_LEN as usize);
        let header =
            pack::RecordHeader::decode(head.try_into().expect("split at the header length"))
                .ok_or_else(|| damaged(RecordFault::Header))?;
        if !loc.describes(id, &header) {
            return Err(damaged(RecordFault::Mismatch));
        }
        pack::RecordCodec::open_whole(&header, stored).map_err(&damaged)
    }

    fn open_pack(&self, name: &str) -> std::io::Result<(OpenPack, u64)> {
        let mut open = self.open_packs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((file, len)) = open.get(name) {
            return Ok((file.clone(), *len));
        }
        let (file, len) = match PackFile::open(&self.root, name)? {
            PackFile::Plain(file) => {
                let len = file.metadata()?.len();
                (OpenPack::Plain(std::sync::Arc::new(file)), len)
            }
            mut sealed => {
                let len = sealed.plaintext_len()?;
                (
                    OpenPack::Sealed(std::sync::Arc::new(std::sync::Mutex::new(sealed))),
                    len,
                )
            }
        };
        open.insert(name.to_string(), (file.clone(), len));
        Ok((file, len))
    }
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
    uncommitted: std::collections::BTreeSet<u64>,
    packs: PackReader,
}

impl Archive {
    /// Creates an empty archive at `root`, which must be missing or an empty directory.
    pub fn init(root: &Path) -> Result<(), ArchiveError> {
        Archive::init_as(root, None, &[])
    }

    /// Creates an empty encrypted archive (format version 2) with the keys `init` made.
    pub fn init_encrypted(root: &Path, keys: &super::crypto::NewKeys) -> Result<(), ArchiveError> {
        Archive::init_as(root, Some(keys.encryption.clone()), &keys.key_files)
    }

    fn init_as(
        root: &Path,
        encryption: Option<super::crypto::Encryption>,
        key_files: &[(String, Vec<u8>)],
    ) -> Result<(), ArchiveError> {
        if root.join(HEADER_FILE).exists() {
            return Err(ArchiveError::AlreadyAnArchive {
                path: root.to_path_buf(),
            });
        }
        if root.is_file() {
            return Err(ArchiveError::IsAFile {
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
        let header = Header {
            format: FORMAT_NAME.into(),
            version: match encryption {
                Some(_) => super::crypto::ENCRYPTED_VERSION,
                None => FORMAT_VERSION,
            },
            created: Utc::now(),
            encryption,
        };
        let text = serde_json::to_string_pretty(&header).expect("header serializes") + "\n";
        Archive::init_with_header(root, text.as_bytes(), key_files)
    }

    /// Lays out an empty archive at `root` (missing) with `header` as its header file (a new
    /// archive's, or a remote one's for its local mirror) and, for an encrypted one, its
    /// `keys/` files: written before the header, which makes the directory an archive.
    pub(crate) fn init_with_header(
        root: &Path,
        header: &[u8],
        key_files: &[(String, Vec<u8>)],
    ) -> Result<(), ArchiveError> {
        for sub in ["", "packs", "catalog", "commits", "tmp"] {
            durable::create_dir(&root.join(sub)).map_err(ArchiveError::io(root.join(sub)))?;
        }
        if !key_files.is_empty() {
            let keys = root.join(super::crypto::KEYS_DIR);
            durable::create_dir(&keys).map_err(ArchiveError::io(&keys))?;
            for (name, bytes) in key_files {
                durable::write_once(&root.join("tmp"), &keys.join(name), bytes)
                    .map_err(ArchiveError::io(keys.join(name)))?;
            }
        }
        durable::create_new(&root.join("lock")).map_err(ArchiveError::io(root.join("lock")))?;
        durable::write_once(&root.join("tmp"), &root.join(HEADER_FILE), header)
            .map_err(ArchiveError::io(root.join(HEADER_FILE)))?;
        if let Some(parent) = root.parent() {
            let _ = durable::sync_dir(parent);
        }
        Ok(())
    }

    pub fn open(root: &Path) -> Result<Archive, ArchiveError> {
        check_header(root)?;
        let mut entries = Vec::new();
        let read = read_catalog(root, &mut |entry| entries.push(entry))?;
        let mut archive = Archive {
            root: root.to_path_buf(),
            commits: read.commits,
            entries: Vec::with_capacity(entries.len()),
            stored: HashMap::new(),
            load_issues: read.issues,
            last_commit: read.last_commit,
            uncommitted: read.uncommitted,
            packs: PackReader::new(root),
        };
        for entry in entries {
            archive.push_entry(entry, &read.retired);
        }
        Ok(archive)
    }

    /// Records a catalog line; the last line that stored an id, outside retired packs, wins.
    fn push_entry(&mut self, entry: Entry, retired: &HashSet<String>) {
        if super::index::stores_bytes(&entry, retired) {
            self.stored.insert(entry.id, self.entries.len());
        }
        self.entries.push(entry);
    }

    /// Messages `repair` declared lost and that were not stored again since.
    pub fn lost(&self) -> Vec<&super::catalog::Lost> {
        self.commits
            .iter()
            .flat_map(|c| &c.lost)
            .filter(|l| !self.stored.contains_key(&l.id))
            .collect()
    }

    /// Packs `repair` retired.
    pub fn retired_packs(&self) -> HashSet<&str> {
        self.commits
            .iter()
            .flat_map(|c| c.retired_packs.iter().map(String::as_str))
            .collect()
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
            pack: at.pack.as_str().into(),
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
            let Some(stored) = self.stored_entry(&entry.id) else {
                continue; // its storing line was lost; verify reports it
            };
            match by_id.get(&entry.id) {
                Some(&i) => out[i].merge(entry),
                None => {
                    by_id.insert(entry.id, out.len());
                    out.push(Message::first(entry, stored));
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

    fn located(&self, id: &Digest) -> Result<Location, ArchiveError> {
        self.location(id)
            .ok_or_else(|| ArchiveError::UnknownId { prefix: id.hex() })
    }

    /// Streams message `id` to `out`, after first checking that it decompresses to exactly its
    /// id: nothing is written for a damaged message. Memory stays bounded whatever its size.
    pub fn copy_message(&self, id: &Digest, out: &mut dyn Write) -> Result<(), ArchiveError> {
        self.packs.copy(id, &self.located(id)?, out)
    }

    /// Reads a whole message into memory, checked (see [`PackReader::read`]).
    pub fn read_message(&self, id: &Digest) -> Result<Vec<u8>, ArchiveError> {
        self.packs.read(id, &self.located(id)?)
    }

    /// The highest commit number on disk, of a record or of the files of one (see `read_catalog`).
    pub fn last_commit(&self) -> u64 {
        self.last_commit
    }

    /// Commit numbers whose files an interrupted writer left; the next writer deletes them.
    pub fn uncommitted(&self) -> &std::collections::BTreeSet<u64> {
        &self.uncommitted
    }
}
