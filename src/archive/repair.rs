//! `repair`: after `verify --full` found damage, keeps every message that can still be read and
//! makes the archive verify again, in one new commit:
//! - a damaged pack is salvaged record by record (resynchronising on the record magic) into a
//!   new pack, then retired and moved to `quarantine/`;
//! - a damaged catalog segment is replaced by its readable lines, and messages whose lines were
//!   lost are catalogued again from what the packs hold;
//! - an unreadable commit record is moved to `quarantine/` and its packs and segment are read as
//!   above;
//! - what cannot be recovered is listed (with account, UIDL, date, from, subject) and recorded as
//!   lost; a later backup of an account that still has it, or an import of it, heals it.
//!
//! Repair never deletes a readable message (a retired pack is moved aside, not deleted) and
//! never writes zeros in place of lost data.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use chrono::Utc;
use serde::Serialize;

use crate::archive::catalog::{self, Entry, Lost, Source};
use crate::archive::crypto;
use crate::archive::index::{list_dir, read_records, visit_segments};
use crate::archive::pack::{self, PACK_MAGIC, RECORD_HEADER_LEN, RECORD_MAGIC, RecordHeader};
use crate::archive::verify::{self, DamagedMessage};
use crate::archive::{ArchiveError, Digest, Incoming, Writer, durable};

#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub dry_run: bool,
    /// Damaged packs whose readable records were saved into a new pack.
    pub retired_packs: Vec<String>,
    pub salvaged_messages: usize,
    /// Messages whose catalog line was lost, catalogued again.
    pub recatalogued: usize,
    pub retired_segments: Vec<String>,
    pub retired_commits: Vec<u64>,
    /// Messages that could not be recovered.
    pub lost: Vec<DamagedMessage>,
    /// Of those, how many a backup may fetch again (their account and UIDL are known).
    pub refetchable: usize,
}

impl RepairReport {
    pub fn nothing_to_do(&self) -> bool {
        self.retired_packs.is_empty()
            && self.recatalogued == 0
            && self.retired_segments.is_empty()
            && self.retired_commits.is_empty()
            && self.lost.is_empty()
    }
}

/// A record found readable in a pack: where, and its header.
struct Found {
    pack: String,
    offset: u64,
    header: RecordHeader,
}

/// Every record of `bytes` (a pack's content) that decompresses to its id, found by walking the
/// records and, past damage, searching for the next record magic.
pub fn salvage(bytes: &[u8]) -> Vec<(u64, RecordHeader)> {
    let mut out = Vec::new();
    let mut pos = if bytes.starts_with(PACK_MAGIC) {
        PACK_MAGIC.len()
    } else {
        0
    };
    while pos + RECORD_HEADER_LEN as usize <= bytes.len() {
        let header_bytes: &[u8; RECORD_HEADER_LEN as usize] = bytes
            [pos..pos + RECORD_HEADER_LEN as usize]
            .try_into()
            .expect("sliced to size");
        let end = RecordHeader::decode(header_bytes).and_then(|h| {
            let end = pos
                .checked_add(RECORD_HEADER_LEN as usize)?
                .checked_add(usize::try_from(h.stored_len).ok()?)?;
            (end <= bytes.len()).then_some((h, end))
        });
        if let Some((header, end)) = end {
            let mut stored = &bytes[pos + RECORD_HEADER_LEN as usize..end];
            if pack::RecordCodec::check(&header, &mut stored).is_ok() {
                out.push((pos as u64, header));
                pos = end;
                continue;
            }
        }
        pos = match bytes[pos + 1..].windows(4).position(|w| w == RECORD_MAGIC) {
            Some(i) => pos + 1 + i,
            None => break,
        };
    }
    out
}

/// One found record's message. `last` keeps the pack read last (records come pack by pack):
/// an encrypted pack is decrypted once, not once per record.
fn read_record(
    root: &Path,
    found: &Found,
    last: &mut Option<(String, Vec<u8>)>,
) -> Result<Vec<u8>, ArchiveError> {
    if last.as_ref().is_none_or(|(name, _)| *name != found.pack) {
        let path = root.join("packs").join(&found.pack);
        *last = Some((found.pack.clone(), crypto::read_salvageable(root, &path)?));
    }
    let bytes = &last.as_ref().expect("just read").1;
    let damaged = |fault| ArchiveError::DamagedMessage {
        id: found.header.id,
        pack: found.pack.clone(),
        fault,
    };
    // The pack is read again (once): what `salvage` found may have changed since (shorter now).
    let start = (found.offset as usize).saturating_add(RECORD_HEADER_LEN as usize);
    let end = start.saturating_add(usize::try_from(found.header.stored_len).unwrap_or(usize::MAX));
    let mut stored = bytes
        .get(start..end)
        .ok_or_else(|| damaged(pack::RecordFault::Header))?;
    let mut raw = Vec::new();
    pack::RecordCodec::open(&found.header, &mut stored, &mut raw).map_err(damaged)?;
    Ok(raw)
}

/// Works out and, unless `dry_run`, applies the repair to the archive at `root`. `writer` must
/// be open on it. Memory: the verify's view of the archive (its locations), and the catalog
/// lines of the messages repair saves; the catalog is never held whole.
pub fn repair(
    root: &Path,
    writer: Option<&mut Writer>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RepairReport, ArchiveError> {
    let mut report = RepairReport {
        dry_run: writer.is_none(),
        ..RepairReport::default()
    };
    let (check, stored) = verify::verify(root, true, progress)?;
    let mut read = read_records(root)?;
    let commits = read.commits.clone();
    let pack_path = |name: &str| root.join("packs").join(name);

    // Commit numbers without a readable record: their files are read as orphans.
    let readable: HashSet<u64> = commits.iter().map(|c| c.commit).collect();
    let retired_packs = &read.retired;
    let already_retired_commits: HashSet<u64> = commits
        .iter()
        .flat_map(|c| c.retired_commits.iter().copied())
        .collect();
    report.retired_commits = (1..=read.last_commit)
        .filter(|n| !readable.contains(n) && !already_retired_commits.contains(n))
        .collect();
    // In an encrypted archive a file no signed record names may be anyone's (age does not
    // say who encrypted it): it is never catalogued.
    let trusts_orphans = crypto::sealed(root)?.is_none();
    let orphan = |name: &str| {
        trusts_orphans
            && catalog::commit_of_file_name(name)
                .is_some_and(|n| report.retired_commits.contains(&n))
    };

    // Damaged segments: replaced by their readable lines.
    let mut segment_lines: Vec<(String, Vec<Entry>)> = Vec::new();
    for c in &commits {
        let path = root.join("catalog").join(&c.segment.name);
        let bytes = fs::read(&path).unwrap_or_default();
        if bytes.len() as u64 != c.segment.size || Some(Digest::of(&bytes)) != c.segment.sha256 {
            // Of a replaced encrypted segment nothing is trusted (its record does not vouch
            // for it); a damaged one gives the chunks before the damage.
            let plain = match crypto::sealed(root)? {
                Some(_) if bytes.len() as u64 != c.segment.size => Vec::new(),
                _ => crypto::read_salvageable(root, &path).unwrap_or_default(),
            };
            segment_lines.push((
                c.segment.name.clone(),
                parse_lines(&catalog::decode_segment(&plain).0),
            ));
        }
    }

    // Damaged packs: missing, wrong size, or not hashing to their name; plus orphaned packs.
    let mut bad_packs: Vec<String> = Vec::new();
    for c in &commits {
        for p in c.packs.iter().filter(|p| !retired_packs.contains(&p.name)) {
            let path = pack_path(&p.name);
            let intact = fs::read(&path).is_ok_and(|b| {
                b.len() as u64 == p.size && p.name.ends_with(&format!("-{}.pack", Digest::of(&b)))
            });
            if !intact {
                bad_packs.push(p.name.clone());
            }
        }
    }
    bad_packs.extend(list(root, "packs")?.into_iter().filter(|n| orphan(n)));

    let mut salvaged: Vec<Found> = Vec::new();
    for name in &bad_packs {
        if let Ok(bytes) = crypto::read_salvageable(root, &pack_path(name)) {
            salvaged.extend(salvage(&bytes).into_iter().map(|(offset, header)| Found {
                pack: name.clone(),
                offset,
                header,
            }));
        }
    }
    // Readable records of intact packs that no catalog line names.
    let mut uncatalogued: Vec<Found> = Vec::new();
    for m in &check.uncatalogued {
        if bad_packs.contains(&m.pack) {
            continue;
        }
        if let Ok(bytes) = crypto::read_salvageable(root, &pack_path(&m.pack)) {
            uncatalogued.extend(
                salvage(&bytes)
                    .into_iter()
                    .filter(|(_, h)| h.id == m.id)
                    .map(|(offset, header)| Found {
                        pack: m.pack.clone(),
                        offset,
                        header,
                    }),
            );
        }
    }
    let saved: HashSet<Digest> = salvaged
        .iter()
        .chain(&uncatalogued)
        .map(|f| f.header.id)
        .collect();
    report.salvaged_messages = salvaged
        .iter()
        .filter(|f| stored.has_bytes(&f.header.id))
        .count();
    report.recatalogued = salvaged
        .iter()
        .chain(&uncatalogued)
        .filter(|f| !stored.has_bytes(&f.header.id))
        .count();
    report.retired_packs = bad_packs
        .iter()
        .filter(|n| {
            commits
                .iter()
                .any(|c| c.packs.iter().any(|p| &p.name == *n))
        })
        .cloned()
        .collect();
    report.retired_segments = segment_lines.iter().map(|(n, _)| n.clone()).collect();
    for m in check.damaged.iter().filter(|m| !saved.contains(&m.id)) {
        if !report.lost.iter().any(|l| l.id == m.id) {
            report.lost.push(m.clone());
        }
    }
    report.refetchable = report
        .lost
        .iter()
        .filter(|l| {
            l.sources
                .iter()
                .any(|s| matches!(s, Source::Pop3 { uidl: Some(_), .. }))
        })
        .count();

    let Some(writer) = writer else {
        return Ok(report);
    };
    if report.nothing_to_do() {
        return Ok(report);
    }
    for name in &report.retired_packs {
        writer.retire_pack(name);
    }
    for (name, lines) in segment_lines {
        writer.retire_segment(&name, lines);
    }
    for n in &report.retired_commits {
        writer.retire_commit(*n);
    }
    // The sightings of the messages saved, to record them again: from the catalog, read
    // line by line, and from orphaned or damaged segments.
    let mut known_sources: HashMap<Digest, Vec<Entry>> = HashMap::new();
    visit_segments(root, &mut read, &|_| true, &mut |e: Entry| {
        if saved.contains(&e.id) {
            known_sources.entry(e.id).or_default().push(e);
        }
    })?;
    for name in list(root, "catalog")?.into_iter().filter(|n| orphan(n)) {
        let bytes = crypto::read_salvageable(root, &root.join("catalog").join(&name))?;
        for e in parse_lines(&catalog::decode_segment(&bytes).0) {
            if saved.contains(&e.id) {
                known_sources.entry(e.id).or_default().push(e);
            }
        }
    }
    let mut last_pack = None;
    for found in salvaged.iter().chain(&uncatalogued) {
        let raw = read_record(root, found, &mut last_pack)?;
        let sightings = known_sources
            .get(&found.header.id)
            .cloned()
            .unwrap_or_default();
        let incoming: Vec<Incoming> = if sightings.is_empty() {
            vec![Incoming {
                raw,
                source: Source::Recovered {
                    pack: found.pack.clone(),
                },
                flags: None,
                first_seen: Utc::now(),
            }]
        } else {
            sightings
                .into_iter()
                .map(|e| Incoming {
                    raw: raw.clone(),
                    source: e.source,
                    flags: e.flags,
                    first_seen: e.first_seen,
                })
                .collect()
        };
        writer.add_batch(incoming)?;
    }
    for m in &report.lost {
        writer.record_lost(Lost {
            id: m.id,
            reason: m.reason.clone(),
        });
    }
    writer.commit()?;

    // Only now that the commit point is on disk: move what was retired out of the way.
    let quarantine = root.join("quarantine");
    durable::create_dir(&quarantine).map_err(ArchiveError::io(&quarantine))?;
    let mut aside: Vec<(String, String)> = report
        .retired_packs
        .iter()
        .map(|n| ("packs".to_string(), n.clone()))
        .collect();
    aside.extend(
        bad_packs
            .iter()
            .filter(|n| orphan(n))
            .map(|n| ("packs".to_string(), n.clone())),
    );
    for sub in ["catalog", "commits"] {
        aside.extend(
            list(root, sub)?
                .into_iter()
                .filter(|n| orphan(n))
                .map(|n| (sub.to_string(), n)),
        );
    }
    for (sub, name) in aside {
        let from = root.join(&sub).join(&name);
        if from.exists() {
            durable::rename_durably(&from, &quarantine.join(format!("{sub}-{name}")))
                .map_err(ArchiveError::io(&from))?;
        }
    }
    Ok(report)
}

fn parse_lines(text: &[u8]) -> Vec<Entry> {
    text.split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

fn list(root: &Path, sub: &str) -> Result<Vec<String>, ArchiveError> {
    list_dir(&root.join(sub))
}
