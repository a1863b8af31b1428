//! `copy`: brings into another archive every catalog line it lacks, with the message's bytes
//! when it lacks those too. Each message is read back and re-hashed on the way (a damaged one
//! is named and left out), and the destination's writer stores it exactly as an import would,
//! so the two archives may have different histories and either may be local or remote.
//!
//! A line the destination already has is not read at all: a re-run reads nothing and commits
//! nothing. Commits come every [`COMMIT_BYTES`], so an interrupted copy keeps what it
//! committed and the next run goes on from there.

use std::collections::HashSet;

use serde::Serialize;

use crate::archive::select::Selection;
use crate::archive::{Archive, ArchiveError, Digest, Incoming, Writer};
use crate::stop::Stop;

/// Messages go to the writer in batches of about this many bytes.
const BATCH_BYTES: u64 = 16 << 20;
/// A commit (one upload, for a remote destination) every this many bytes.
const COMMIT_BYTES: u64 = 256 << 20;

#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    /// Messages whose bytes the destination did not have, and their size.
    pub new_messages: u64,
    /// Catalog lines added (a message seen in several sources has several).
    pub lines_added: u64,
    /// Catalog lines the destination had already.
    pub lines_present: u64,
    pub bytes: u64,
    /// Messages left out because their bytes in the source are damaged, with why.
    pub damaged: Vec<(Digest, String)>,
    /// Set when a stop request ended the copy early (what was committed stays).
    pub stopped: bool,
}

pub fn copy(
    source: &Archive,
    selection: &Selection,
    dest: &mut Writer,
    stop: &Stop,
    progress: &dyn Fn(u64),
) -> Result<CopyReport, ArchiveError> {
    let selected: Option<HashSet<Digest>> = (!is_everything(selection)).then(|| {
        source
            .messages()
            .into_iter()
            .filter(|m| selection.matches(m))
            .map(|m| m.id)
            .collect()
    });
    let mut report = CopyReport::default();
    let mut damaged: HashSet<Digest> = HashSet::new();
    let mut batch: Vec<Incoming> = Vec::new();
    let mut batch_bytes = 0;
    let mut uncommitted = 0;
    for entry in source.entries() {
        if selected.as_ref().is_some_and(|s| !s.contains(&entry.id)) || damaged.contains(&entry.id)
        {
            continue;
        }
        if dest.index().knows(&entry.id, &entry.source) {
            report.lines_present += 1;
            continue;
        }
        if stop.requested() {
            report.stopped = true;
            break;
        }
        let raw = match source.read_message(&entry.id) {
            Ok(raw) => raw,
            Err(e) => {
                damaged.insert(entry.id);
                report.damaged.push((entry.id, crate::error_chain(&e)));
                continue;
            }
        };
        let size = raw.len() as u64;
        batch_bytes += size;
        batch.push(Incoming {
            raw,
            source: entry.source.clone(),
            flags: entry.flags.clone(),
            first_seen: entry.first_seen,
        });
        if batch_bytes >= BATCH_BYTES {
            uncommitted += add(dest, &mut batch, &mut report)?;
            progress(batch_bytes);
            batch_bytes = 0;
            if uncommitted >= COMMIT_BYTES {
                dest.commit()?;
                uncommitted = 0;
            }
        }
    }
    add(dest, &mut batch, &mut report)?;
    progress(batch_bytes);
    dest.commit()?;
    Ok(report)
}

/// What another archive lacks of `source`: catalog lines, and when the oldest of them was
/// first seen here (how far behind a copy is, for `status`).
#[derive(Debug, Default, Serialize)]
pub struct Behind {
    pub lines: u64,
    pub oldest: Option<chrono::DateTime<chrono::Utc>>,
}

pub fn behind(source: &Archive, copy: &crate::archive::Index) -> Behind {
    let mut behind = Behind::default();
    for entry in source.entries() {
        if !copy.knows(&entry.id, &entry.source) {
            behind.lines += 1;
            behind.oldest = Some(
                behind
                    .oldest
                    .map_or(entry.first_seen, |t| t.min(entry.first_seen)),
            );
        }
    }
    behind
}

fn is_everything(selection: &Selection) -> bool {
    selection.accounts.is_empty()
        && selection.since.is_none()
        && selection.until.is_none()
        && selection.from.is_none()
        && selection.subject.is_none()
        && selection.ids.is_empty()
}

/// Hands a batch to the writer; returns the bytes it held.
fn add(
    dest: &mut Writer,
    batch: &mut Vec<Incoming>,
    report: &mut CopyReport,
) -> Result<u64, ArchiveError> {
    let sizes: Vec<u64> = batch.iter().map(|m| m.raw.len() as u64).collect();
    for (added, size) in dest
        .add_batch(std::mem::take(batch))?
        .into_iter()
        .zip(&sizes)
    {
        match added {
            crate::archive::Added::New => {
                report.new_messages += 1;
                report.lines_added += 1;
                report.bytes += size;
            }
            crate::archive::Added::Duplicate => report.lines_added += 1,
            crate::archive::Added::Known => report.lines_present += 1,
        }
    }
    Ok(sizes.iter().sum())
}
