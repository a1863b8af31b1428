//! `copy`: brings into another archive every catalog line it lacks, with the message's bytes
//! when it lacks those too. Each message is read back and re-hashed on the way (a damaged one
//! is named and left out), and the destination's writer stores it exactly as an import would,
//! so the two archives may have different histories and either may be local or remote.
//!
//! A line the destination already has is not read at all: a re-run reads nothing and commits
//! nothing. Commits come every [`COMMIT_BYTES`], so an interrupted copy keeps what it
//! committed and the next run goes on from there.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;

use crate::archive::index::{read_records, visit_segments};
use crate::archive::local_index::{IndexError, LocalIndex, Query};
use crate::archive::select::Selection;
use crate::archive::{ArchiveError, Digest, Entry, Incoming, Location, PackReader, Writer};
use crate::stop::Stop;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Not transparent: the CLI finds the index error in the chain, to discard a damaged index.
    #[error("{0}")]
    Index(#[from] IndexError),
}

/// The archive copied from. Its catalog lines are read from its segments one commit at a
/// time, never held whole.
pub struct Source<'a> {
    pub root: &'a Path,
    /// Where a message's bytes are (the local index, or a view of the catalog's locations).
    pub locate: &'a dyn Fn(&Digest) -> Result<Option<Location>, IndexError>,
    /// Only these messages; `None`: all.
    pub only: Option<&'a HashSet<Digest>>,
    /// Only the commits up to this one: those `locate` knows (a writer may commit to the
    /// source while the copy runs; its mail goes with the next copy). `None`: all.
    pub upto: Option<u64>,
}

/// The ids `selection` picks, read from the local index; `None` when it picks everything.
pub fn selected(
    index: &LocalIndex,
    query: &Query,
    selection: &Selection,
) -> Result<Option<HashSet<Digest>>, IndexError> {
    if is_everything(selection) {
        return Ok(None);
    }
    let mut ids = HashSet::new();
    index.for_each(query, &mut |found| {
        if selection.matches(&found.message()) {
            ids.insert(found.id);
        }
        Ok(true)
    })?;
    Ok(Some(ids))
}

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
    source: &Source<'_>,
    dest: &mut Writer,
    stop: &Stop,
    progress: &dyn Fn(u64),
) -> Result<CopyReport, CopyError> {
    let packs = PackReader::new(source.root);
    let mut copying = Copying {
        source,
        packs: &packs,
        dest,
        report: CopyReport::default(),
        damaged: HashSet::new(),
        batch: Vec::new(),
        batch_bytes: 0,
        uncommitted: 0,
        failed: None,
        progress,
    };
    let mut read = read_records(source.root)?;
    let commits: Vec<u64> = read
        .commits
        .iter()
        .map(|c| c.commit)
        .filter(|&n| source.upto.is_none_or(|upto| n <= upto))
        .collect();
    for commit in commits {
        if stop.requested() {
            copying.report.stopped = true;
            break;
        }
        visit_segments(
            source.root,
            &mut read,
            &|c| c.commit == commit,
            &mut |entry| copying.line(entry, stop),
        )?;
        if let Some(e) = copying.failed.take() {
            return Err(e);
        }
    }
    copying.flush()?;
    (copying.progress)(copying.batch_bytes);
    copying.dest.commit()?;
    Ok(copying.report)
}

/// A copy under way.
struct Copying<'a, 'w> {
    source: &'a Source<'a>,
    packs: &'a PackReader,
    dest: &'w mut Writer,
    report: CopyReport,
    damaged: HashSet<Digest>,
    batch: Vec<Incoming>,
    batch_bytes: u64,
    uncommitted: u64,
    /// The first error, which ends the copy at the end of the segment being read.
    failed: Option<CopyError>,
    progress: &'a dyn Fn(u64),
}

impl Copying<'_, '_> {
    /// One catalog line of the source, in catalog order.
    fn line(&mut self, entry: Entry, stop: &Stop) {
        if self.failed.is_some() || self.report.stopped {
            return;
        }
        if let Err(e) = self.try_line(entry, stop) {
            self.failed = Some(e);
        }
    }

    fn try_line(&mut self, entry: Entry, stop: &Stop) -> Result<(), CopyError> {
        if self.source.only.is_some_and(|s| !s.contains(&entry.id))
            || self.damaged.contains(&entry.id)
        {
            return Ok(());
        }
        if self.dest.index().knows(&entry.id, &entry.source) {
            self.report.lines_present += 1;
            return Ok(());
        }
        if stop.requested() {
            self.report.stopped = true;
            return Ok(());
        }
        let read = match (self.source.locate)(&entry.id)? {
            Some(location) => self.packs.read(&entry.id, &location),
            // Its storing line was lost: `verify` names it, `repair` recovers what it can.
            None => Err(ArchiveError::UnknownId {
                prefix: entry.id.hex(),
            }),
        };
        let raw = match read {
            Ok(raw) => raw,
            Err(e) => {
                self.damaged.insert(entry.id);
                self.report.damaged.push((entry.id, crate::error_chain(&e)));
                return Ok(());
            }
        };
        self.batch_bytes += raw.len() as u64;
        self.batch.push(Incoming {
            raw,
            source: entry.source,
            flags: entry.flags,
            first_seen: entry.first_seen,
        });
        if self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
            (self.progress)(self.batch_bytes);
            self.batch_bytes = 0;
            if self.uncommitted >= COMMIT_BYTES {
                self.dest.commit()?;
                self.uncommitted = 0;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ArchiveError> {
        self.uncommitted += add(self.dest, &mut self.batch, &mut self.report)?;
        Ok(())
    }
}

/// What another archive lacks of `source`: catalog lines, and when the oldest of them was
/// first seen here (how far behind a copy is, for `status`).
#[derive(Debug, Default, Serialize)]
pub struct Behind {
    pub lines: u64,
    pub oldest: Option<chrono::DateTime<chrono::Utc>>,
}

pub fn behind(source: &Path, copy: &crate::archive::Index) -> Result<Behind, ArchiveError> {
    let mut behind = Behind::default();
    let mut read = read_records(source)?;
    // Whole lines, as `copy` reads them: a line it cannot read (and so never copies) is not
    // behind.
    visit_segments(source, &mut read, &|_| true, &mut |line: Entry| {
        if !copy.knows(&line.id, &line.source) {
            behind.lines += 1;
            behind.oldest = Some(
                behind
                    .oldest
                    .map_or(line.first_seen, |t| t.min(line.first_seen)),
            );
        }
    })?;
    Ok(behind)
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
