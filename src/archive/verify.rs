//! `verify`: proves that the archive is whole, naming every message that is not. Never writes.
//!
//! Quick: the header, every commit record, segment (size + SHA-256, each line parses) and pack
//! (present, right size), and catalog lines pointing inside their packs.
//! Full: also every pack's SHA-256 against its name, every message decompressed and re-hashed
//! against its id, and every pack record accounted for by the catalog (a record no catalog line
//! names means a catalog line was lost).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;

use super::ArchiveError;
use super::catalog::{CommitRecord, Entry, Source, commit_of_file_name};
use super::compact_map::CompactMap;
use super::crypto::PackFile;
use super::digest::{Digest, Hasher};
use super::envelope::Envelope;
use super::index::{IdKey, Index, list_dir, read_records, stores_bytes, visit_segments};
use super::pack::{self, PACK_MAGIC, RECORD_HEADER_LEN, RecordHeader};

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub full: bool,
    pub commits: usize,
    pub packs: usize,
    pub messages: usize,
    /// Raw bytes decompressed and re-hashed (full only).
    pub bytes_checked: u64,
    /// Problems with the archive's structure (records, segments, packs).
    pub problems: Vec<String>,
    /// Messages whose bytes are missing or wrong.
    pub damaged: Vec<DamagedMessage>,
    /// Messages found in packs whose catalog lines are lost.
    pub uncatalogued: Vec<DamagedMessage>,
    /// Files an interrupted writer left; harmless, removed by the next writer.
    pub leftovers: Vec<String>,
    /// Messages `repair` declared lost (known, listed, not counted as new damage); a backup or
    /// import that sees them again heals them.
    pub quarantined: Vec<DamagedMessage>,
    /// An encrypted archive checked without its identity: every file against its record and
    /// name, but no message decrypted or re-hashed.
    pub sealed_files_only: bool,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.damaged.is_empty() && self.uncatalogued.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DamagedMessage {
    pub id: Digest,
    pub pack: String,
    pub reason: String,
    pub sources: Vec<Source>,
    pub subject: Option<String>,
    pub from: Option<String>,
}

/// Verifies the archive at `root` (its header checked), reading the catalog once into the
/// compact [`Index`] of locations (about 48 bytes a message) and once more only to describe what is
/// damaged. Returns the report, and the index for checking the local index against.
pub fn verify(
    root: &Path,
    full: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(VerifyReport, Index), ArchiveError> {
    let sealed = super::crypto::sealed(root)?;
    if let Some(sealed) = &sealed
        && !sealed.can_decrypt()
    {
        // A key given that does not open the archive is said, not taken for no key.
        if sealed.has_identity() {
            sealed.unlock()?;
        }
        let mut report = verify_sealed_files(root, full)?;
        report.problems.extend(sealed.key_file_problems());
        return Ok((report, Index::empty(root)));
    }
    // Ids seen on a line that does not store them (another source, or bytes in a retired pack):
    // each needs a storing line somewhere.
    let mut unstored: CompactMap<IdKey, ()> = CompactMap::default();
    let (mut index, read) = Index::load_locations(root, &mut |entry, stores| {
        if !stores {
            unstored.insert(super::index::id_key(&entry.id), ());
        }
    })?;
    let packs_dir = root.join("packs");
    let mut report = VerifyReport {
        full,
        commits: read.commits.len(),
        ..VerifyReport::default()
    };
    report.problems.extend(read.issues.iter().cloned());
    // (With the identity the key file that opened the archive was read whole; another may not.)
    if let Some(sealed) = &sealed {
        report.problems.extend(sealed.key_file_problems());
    }

    let mut pack_sizes: HashMap<&str, u64> = HashMap::new();
    for commit in &read.commits {
        for p in commit
            .packs
            .iter()
            .filter(|p| !read.retired.contains(&p.name))
        {
            pack_sizes.insert(&p.name, p.size);
            let path = packs_dir.join(&p.name);
            match std::fs::metadata(&path) {
                Ok(m) if m.len() == p.size => {}
                Ok(m) => report.problems.push(format!(
                    "pack {} is {} bytes, commit {:08} says {}",
                    p.name,
                    m.len(),
                    commit.commit,
                    p.size
                )),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    report.problems.push(format!("pack {} is missing", p.name))
                }
                Err(e) => return Err(ArchiveError::io(path)(e)),
            }
        }
    }
    report.packs = pack_sizes.len();
    report_unreferenced(root, &read, &mut report)?;

    // Messages `repair` declared lost and that were not stored again since.
    let known_lost: HashMap<Digest, &str> = read
        .commits
        .iter()
        .flat_map(|c| &c.lost)
        .filter(|l| !index.has_bytes(&l.id))
        .map(|l| (l.id, l.reason.as_str()))
        .collect();
    let mut lost_lines: Vec<Digest> = unstored
        .iter()
        .map(|(key, _)| super::index::digest_of(key))
        .filter(|id| !index.has_bytes(id))
        .collect();
    drop(unstored);
    lost_lines.sort();
    for id in lost_lines {
        match known_lost.get(&id) {
            Some(reason) => report.quarantined.push(damaged(
                id,
                "",
                format!("lost (found by repair: {reason})"),
                None,
            )),
            None => report.damaged.push(damaged(
                id,
                "",
                "the catalog line that stored it is lost".into(),
                None,
            )),
        }
    }

    // Every stored message, grouped by pack; every pack a commit names is checked, even one
    // whose catalog lines were all lost.
    let mut packs = index.stored_by_pack();
    report.messages = packs.iter().map(|(_, positions)| positions.len()).sum();
    for (name, _) in &packs {
        if !pack_sizes.contains_key(&**name) {
            report.problems.push(format!(
                "catalog lines point into pack {name}, which no commit record names"
            ));
        }
    }
    let with_messages: HashSet<Arc<str>> = packs.iter().map(|(name, _)| name.clone()).collect();
    packs.extend(
        pack_sizes
            .keys()
            .filter(|name| !with_messages.contains(**name))
            .map(|name| (Arc::<str>::from(*name), Vec::new())),
    );
    packs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let outcomes: Vec<PackOutcome> = packs
        .par_iter()
        .map(|(name, positions)| {
            check_pack(
                &index,
                &packs_dir,
                name,
                positions,
                pack_sizes.get(&**name).copied(),
                full,
                progress,
            )
        })
        .collect::<Result<_, _>>()?;
    drop(packs);
    for outcome in outcomes {
        report.bytes_checked = report.bytes_checked.saturating_add(outcome.bytes_checked);
        report.problems.extend(outcome.problems);
        report.damaged.extend(outcome.damaged);
        report.uncatalogued.extend(outcome.uncatalogued);
    }
    report.damaged.sort_by_key(|a| a.id);
    describe_all(root, &mut report)?;
    Ok((report, index))
}

/// An encrypted archive without its identity: every commit record's signature, and every
/// segment and pack it names present with its size and (`full`) the SHA-256 its record or
/// name gives. The ciphertext is all that is read.
fn verify_sealed_files(root: &Path, full: bool) -> Result<VerifyReport, ArchiveError> {
    let read = read_records(root)?;
    let mut report = VerifyReport {
        full,
        commits: read.commits.len(),
        sealed_files_only: true,
        ..VerifyReport::default()
    };
    report.problems.extend(read.issues.iter().cloned());
    let mut files = Vec::new();
    for commit in &read.commits {
        if !read.retired_segments.contains(&commit.segment.name) {
            files.push((
                format!("catalog segment {}", commit.segment.name),
                root.join("catalog").join(&commit.segment.name),
                commit.segment.size,
                commit.segment.sha256,
            ));
        }
        for p in commit
            .packs
            .iter()
            .filter(|p| !read.retired.contains(&p.name))
        {
            let digest = super::pack::digest_of_name(&p.name);
            files.push((
                format!("pack {}", p.name),
                root.join("packs").join(&p.name),
                p.size,
                digest,
            ));
            report.packs += 1;
        }
        report.messages += commit.new_objects as usize;
    }
    let outcomes: Vec<Option<String>> = files
        .par_iter()
        .map(|(what, path, size, digest)| -> Result<Option<String>, ArchiveError> {
            let actual = match std::fs::metadata(path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Ok(Some(format!("{what} is missing")));
                }
                Err(e) => return Err(ArchiveError::io(path)(e)),
            };
            if actual != *size {
                return Ok(Some(format!("{what} is {actual} bytes, its commit record says {size}")));
            }
            if full {
                let got = File::open(path)
                    .and_then(|mut f| file_digest(&mut f))
                    .map_err(ArchiveError::io(path))?;
                if Some(got) != *digest {
                    return Ok(Some(format!("{what} does not hash to what its commit record names (its bytes changed)")));
                }
            }
            Ok(None)
        })
        .collect::<Result<_, _>>()?;
    report.problems.extend(outcomes.into_iter().flatten());
    report_unreferenced(root, &read, &mut report)?;
    Ok(report)
}

/// Files no commit record names: an interrupted writer's leftovers (its number has an intent
/// marker), else problems.
fn report_unreferenced(
    root: &Path,
    read: &super::index::CatalogRead,
    report: &mut VerifyReport,
) -> Result<(), ArchiveError> {
    for rel in unreferenced_files(root, &read.commits)? {
        let name = rel.rsplit('/').next().unwrap_or(&rel);
        if commit_of_file_name(name).is_some_and(|n| read.uncommitted.contains(&n)) {
            report.leftovers.push(rel);
        } else {
            report
                .problems
                .push(format!("{rel} is not named by any commit record"));
        }
    }
    Ok(())
}

/// Files in `packs/` and `catalog/` that no commit record names.
fn unreferenced_files(root: &Path, commits: &[CommitRecord]) -> Result<Vec<String>, ArchiveError> {
    let mut named: HashSet<String> = HashSet::new();
    for c in commits {
        named.insert(format!("catalog/{}", c.segment.name));
        named.extend(c.packs.iter().map(|p| format!("packs/{}", p.name)));
    }
    let mut out = Vec::new();
    for sub in ["catalog", "packs"] {
        for name in list_dir(&root.join(sub))? {
            let rel = format!("{sub}/{name}");
            if !named.contains(&rel) {
                out.push(rel);
            }
        }
    }
    Ok(out)
}

/// A damaged message, its sources and envelope filled in later by [`describe_all`].
fn damaged(id: Digest, pack: &str, reason: String, envelope: Option<Envelope>) -> DamagedMessage {
    let envelope = envelope.unwrap_or_default();
    DamagedMessage {
        id,
        pack: pack.to_string(),
        reason,
        sources: Vec::new(),
        subject: envelope.subject,
        from: envelope.from,
    }
}

/// Reads the catalog again for the few damaged messages: every source each was seen in, and
/// the envelope of the line that stored it (for one whose envelope was not read from its pack).
fn describe_all(root: &Path, report: &mut VerifyReport) -> Result<(), ArchiveError> {
    let mut wanted: HashMap<Digest, (Vec<Source>, Option<Envelope>)> = HashMap::new();
    for m in report
        .damaged
        .iter()
        .chain(&report.uncatalogued)
        .chain(&report.quarantined)
    {
        wanted.insert(m.id, Default::default());
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let mut read = read_records(root)?;
    let retired = read.retired.clone();
    visit_segments(root, &mut read, &|_| true, &mut |entry: Entry| {
        if let Some((sources, envelope)) = wanted.get_mut(&entry.id) {
            if !sources.contains(&entry.source) {
                sources.push(entry.source.clone());
            }
            if stores_bytes(&entry, &retired) {
                *envelope = Some(entry.envelope);
            }
        }
    })?;
    for m in report
        .damaged
        .iter_mut()
        .chain(&mut report.uncatalogued)
        .chain(&mut report.quarantined)
    {
        let (sources, envelope) = &wanted[&m.id];
        m.sources = sources.clone();
        if m.subject.is_none()
            && m.from.is_none()
            && let Some(envelope) = envelope
        {
            m.subject = envelope.subject.clone();
            m.from = envelope.from.clone();
        }
    }
    Ok(())
}

#[derive(Default)]
struct PackOutcome {
    bytes_checked: u64,
    problems: Vec<String>,
    damaged: Vec<DamagedMessage>,
    uncatalogued: Vec<DamagedMessage>,
}

fn check_pack(
    index: &Index,
    packs_dir: &Path,
    name: &str,
    positions: &[usize],
    size: Option<u64>,
    full: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PackOutcome, ArchiveError> {
    let mut out = PackOutcome::default();
    let path = packs_dir.join(name);
    let messages = positions.iter().map(|&p| index.stored_at(p));
    // A pack that cannot be read at all damages each of its messages; verify goes on.
    let opened = File::open(&path).and_then(|file| {
        let meta = file.metadata()?;
        if meta.is_file() {
            Ok((file, meta.len()))
        } else {
            Err(io::Error::other("it is not a regular file"))
        }
    });
    let opened = opened.and_then(|(file, size)| {
        let root = packs_dir.parent().unwrap_or(packs_dir);
        match PackFile::open(root, name)? {
            PackFile::Plain(_) => Ok((file, PackFile::Plain(File::open(&path)?), size)),
            mut plain => {
                let size = plain.plaintext_len()?;
                Ok((file, plain, size))
            }
        }
    });
    let (mut file, mut plain, actual_size) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            for (id, _) in messages {
                out.damaged.push(damaged(
                    id,
                    name,
                    format!("its pack cannot be read: {e}"),
                    None,
                ));
            }
            return Ok(out);
        }
    };
    if !full {
        for (id, loc) in messages {
            if loc
                .offset
                .saturating_add(RECORD_HEADER_LEN)
                .saturating_add(loc.stored_len)
                > actual_size
            {
                out.damaged.push(damaged(
                    id,
                    name,
                    "its record lies beyond the end of the pack".into(),
                    None,
                ));
            }
        }
        return Ok(out);
    }
    let digest = file_digest(&mut file).map_err(ArchiveError::io(&path))?;
    if super::pack::digest_of_name(name) != Some(digest) && size.is_some() {
        out.problems.push(format!(
            "pack {name} does not hash to its name (its bytes changed)"
        ));
    }
    let mut referenced: HashSet<u64> = HashSet::new();
    for (id, loc) in messages {
        referenced.insert(loc.offset);
        match loc.check(&id, &mut plain) {
            Ok(_) => out.bytes_checked = out.bytes_checked.saturating_add(loc.size),
            Err(fault) => out.damaged.push(damaged(id, name, fault.to_string(), None)),
        }
        progress(loc.size);
    }
    for (offset, header) in
        walk_headers(&mut plain, actual_size).map_err(ArchiveError::io(&path))?
    {
        if !referenced.contains(&offset) && !index.has_bytes(&header.id) {
            let envelope = read_head(&mut plain, offset, &header);
            out.uncatalogued.push(damaged(
                header.id,
                name,
                format!("record at offset {offset} has no catalog line"),
                envelope,
            ));
        }
    }
    Ok(out)
}

fn file_digest(file: &mut File) -> io::Result<Digest> {
    file.seek(SeekFrom::Start(0))?;
    let mut h = Hasher::default();
    let mut r = BufReader::with_capacity(1 << 20, &mut *file);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// Record headers from the start of a pack, stopping at the first that is damaged.
fn walk_headers(file: &mut PackFile, size: u64) -> io::Result<Vec<(u64, RecordHeader)>> {
    let mut out = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 8];
    if file.read_exact(&mut magic).is_err() || &magic != PACK_MAGIC {
        return Ok(out);
    }
    let mut pos = PACK_MAGIC.len() as u64;
    while pos + RECORD_HEADER_LEN <= size {
        let Ok(header) = pack::read_record_header(file, pos) else {
            break;
        };
        out.push((pos, header));
        // A damaged header can claim any length: past the end (or past u64) ends the walk.
        match pos.checked_add(RECORD_HEADER_LEN + header.stored_len.min(size)) {
            Some(next) => pos = next,
            None => break,
        }
    }
    Ok(out)
}

/// The envelope of a record no catalog line names, so the report can say what it is.
fn read_head(file: &mut PackFile, offset: u64, header: &RecordHeader) -> Option<Envelope> {
    file.seek(SeekFrom::Start(offset + RECORD_HEADER_LEN))
        .ok()?;
    let mut stored = BufReader::new(&mut *file).take(header.stored_len);
    let mut raw = Vec::new();
    pack::RecordCodec::open(header, &mut stored, &mut raw).ok()?;
    Some(Envelope::parse(&raw))
}
