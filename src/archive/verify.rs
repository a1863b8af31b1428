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

use rayon::prelude::*;
use serde::Serialize;

use super::ArchiveError;
use super::catalog::{Source, commit_of_file_name};
use super::digest::{Digest, Hasher};
use super::envelope::Envelope;
use super::index::Location;
use super::pack::{self, PACK_MAGIC, RECORD_HEADER_LEN, RecordHeader};
use super::store::Archive;

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

pub fn verify(
    archive: &Archive,
    full: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, ArchiveError> {
    let mut report = VerifyReport {
        full,
        commits: archive.commits().len(),
        ..VerifyReport::default()
    };
    report
        .problems
        .extend(archive.load_issues().iter().cloned());

    let retired = archive.retired_packs();
    let mut pack_sizes: HashMap<&str, u64> = HashMap::new();
    for commit in archive.commits() {
        for p in commit
            .packs
            .iter()
            .filter(|p| !retired.contains(p.name.as_str()))
        {
            pack_sizes.insert(&p.name, p.size);
            match std::fs::metadata(archive.pack_path(&p.name)) {
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
                Err(e) => return Err(ArchiveError::io(archive.pack_path(&p.name))(e)),
            }
        }
    }
    report.packs = pack_sizes.len();
    for rel in archive.unreferenced_files()? {
        let name = rel.rsplit('/').next().unwrap_or(&rel);
        if commit_of_file_name(name).is_some_and(|n| archive.uncommitted().contains(&n)) {
            report.leftovers.push(rel);
        } else {
            report
                .problems
                .push(format!("{rel} is not named by any commit record"));
        }
    }

    // Every stored message, grouped by pack.
    let mut by_pack: HashMap<String, Vec<(Digest, Location)>> = HashMap::new();
    let mut ids: HashSet<Digest> = HashSet::new();
    for entry in archive.entries() {
        ids.insert(entry.id);
        if let Some(loc) = archive.location(&entry.id)
            && archive.stored_entry(&entry.id).map(|e| e as *const _) == Some(entry as *const _)
        {
            by_pack
                .entry(loc.pack.to_string())
                .or_default()
                .push((entry.id, loc));
        }
    }
    let known_lost: HashMap<Digest, &str> = archive
        .lost()
        .into_iter()
        .map(|l| (l.id, l.reason.as_str()))
        .collect();
    let lost_lines: Vec<Digest> = ids
        .iter()
        .filter(|id| !archive.contains(id))
        .copied()
        .collect();
    for id in lost_lines {
        if let Some(reason) = known_lost.get(&id) {
            report.quarantined.push(describe(
                archive,
                id,
                "",
                format!("lost (found by repair: {reason})"),
                None,
            ));
            continue;
        }
        report.damaged.push(describe(
            archive,
            id,
            "",
            "the catalog line that stored it is lost".into(),
            None,
        ));
    }
    report.messages = by_pack.values().map(Vec::len).sum();

    // Every pack a commit names is checked, even one whose catalog lines were all lost.
    for name in pack_sizes.keys() {
        by_pack.entry(name.to_string()).or_default();
    }
    let mut packs: Vec<(String, Vec<(Digest, Location)>)> = by_pack.into_iter().collect();
    packs.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, _) in &packs {
        if !pack_sizes.contains_key(name.as_str()) {
            report.problems.push(format!(
                "catalog lines point into pack {name}, which no commit record names"
            ));
        }
    }
    let outcomes: Vec<PackOutcome> = packs
        .par_iter()
        .map(|(name, messages)| {
            check_pack(
                archive,
                name,
                messages,
                pack_sizes.get(name.as_str()).copied(),
                full,
                progress,
            )
        })
        .collect::<Result<_, _>>()?;
    for outcome in outcomes {
        report.bytes_checked = report.bytes_checked.saturating_add(outcome.bytes_checked);
        report.problems.extend(outcome.problems);
        report.damaged.extend(outcome.damaged);
        report.uncatalogued.extend(outcome.uncatalogued);
    }
    report.damaged.sort_by_key(|a| a.id);
    Ok(report)
}

#[derive(Default)]
struct PackOutcome {
    bytes_checked: u64,
    problems: Vec<String>,
    damaged: Vec<DamagedMessage>,
    uncatalogued: Vec<DamagedMessage>,
}

fn check_pack(
    archive: &Archive,
    name: &str,
    messages: &[(Digest, Location)],
    size: Option<u64>,
    full: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PackOutcome, ArchiveError> {
    let mut out = PackOutcome::default();
    let path = archive.pack_path(name);
    // A pack that cannot be read at all damages each of its messages; verify goes on.
    let opened = File::open(&path).and_then(|file| {
        let meta = file.metadata()?;
        if meta.is_file() {
            Ok((file, meta.len()))
        } else {
            Err(io::Error::other("it is not a regular file"))
        }
    });
    let (mut file, actual_size) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            for (id, _) in messages {
                out.damaged.push(describe(
                    archive,
                    *id,
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
                out.damaged.push(describe(
                    archive,
                    *id,
                    name,
                    "its record lies beyond the end of the pack".into(),
                    None,
                ));
            }
        }
        return Ok(out);
    }
    let expected_digest = name
        .strip_suffix(".pack")
        .and_then(|n| n.split_once('-'))
        .map(|(_, d)| d.to_string());
    let digest = file_digest(&mut file).map_err(ArchiveError::io(&path))?;
    if expected_digest.as_deref() != Some(digest.hex().as_str()) && size.is_some() {
        out.problems.push(format!(
            "pack {name} does not hash to its name (its bytes changed)"
        ));
    }
    let mut referenced: HashSet<u64> = HashSet::new();
    for (id, loc) in messages {
        referenced.insert(loc.offset);
        match loc.check(id, &mut file) {
            Ok(()) => out.bytes_checked = out.bytes_checked.saturating_add(loc.size),
            Err(fault) => out
                .damaged
                .push(describe(archive, *id, name, fault.to_string(), None)),
        }
        progress(loc.size);
    }
    for (offset, header) in walk_headers(&mut file, actual_size).map_err(ArchiveError::io(&path))? {
        if !referenced.contains(&offset) && !archive.contains(&header.id) {
            let envelope = read_head(archive, &mut file, offset, &header);
            out.uncatalogued.push(describe(
                archive,
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
fn walk_headers(file: &mut File, size: u64) -> io::Result<Vec<(u64, RecordHeader)>> {
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
        pos += RECORD_HEADER_LEN + header.stored_len;
    }
    Ok(out)
}

/// The envelope of a record no catalog line names, so the report can say what it is.
fn read_head(
    _archive: &Archive,
    file: &mut File,
    offset: u64,
    header: &RecordHeader,
) -> Option<Envelope> {
    file.seek(SeekFrom::Start(offset + RECORD_HEADER_LEN))
        .ok()?;
    let mut stored = BufReader::new(&mut *file).take(header.stored_len);
    let mut raw = Vec::new();
    pack::copy_decompressed(header.raw_len, &mut stored, &mut raw).ok()?;
    Some(Envelope::parse(&raw))
}

fn describe(
    archive: &Archive,
    id: Digest,
    pack: &str,
    reason: String,
    envelope: Option<Envelope>,
) -> DamagedMessage {
    let envelope = envelope
        .or_else(|| archive.stored_entry(&id).map(|e| e.envelope.clone()))
        .unwrap_or_default();
    let mut sources: Vec<Source> = Vec::new();
    for e in archive.entries().iter().filter(|e| e.id == id) {
        if !sources.contains(&e.source) {
            sources.push(e.source.clone());
        }
    }
    DamagedMessage {
        id,
        pack: pack.to_string(),
        reason,
        sources,
        subject: envelope.subject,
        from: envelope.from,
    }
}
