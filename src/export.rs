//! `export`: a portable, self-verifying tar (optionally zstd-compressed) of selected messages.
//!
//! Layout, in this order: `MANIFEST.jsonl` (one line per message: its catalog record, `sha256`
//! and `file`), `SHA256SUMS` (for `sha256sum -c`), then `messages/<sha256>.eml`. Everything in it
//! is a function of the archive's content, so the same archive and selection give the same bytes:
//! members are sorted by message time then id, and carry mode 0644, owner 0, and the message's
//! time as mtime.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::archive::select::{Selection, message_time};
use crate::archive::{Archive, ArchiveError, Digest, Message, durable};
use crate::stop::Stop;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "no message to export: the selection matches none{}; nothing was written",
        if *damaged > 0 { format!(" but {damaged} damaged ones (run `popvault verify --full`)") } else { String::new() }
    )]
    Nothing { damaged: usize },
    #[error("{path} is a directory: give the export a file name (e.g. {path}/mail.tar.zst)")]
    IsDirectory { path: PathBuf },
    #[error("stopped by a signal; no file was left")]
    Stopped,
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// One line of MANIFEST.jsonl.
#[derive(Serialize)]
struct ManifestLine<'a> {
    #[serde(flatten)]
    message: &'a Message<'a>,
    sha256: Digest,
    file: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ExportReport {
    pub file: String,
    pub messages: usize,
    pub bytes: u64,
    /// Damaged messages left out (named in `skipped`).
    pub skipped: Vec<(Digest, String)>,
}

pub fn member_name(id: &Digest) -> String {
    format!("messages/{id}.eml")
}

/// Writes the export to `path` (through a temp file renamed at the end: never half a file).
/// A stop request ends it between two messages with [`ExportError::Stopped`], leaving no file.
pub fn export(
    archive: &Archive,
    selection: &Selection,
    path: &Path,
    stop: &Stop,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ExportReport, ExportError> {
    let write_err = |source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        return Err(ExportError::IsDirectory {
            path: path.to_path_buf(),
        });
    }
    let mut messages: Vec<Message<'_>> = archive
        .messages()
        .into_iter()
        .filter(|m| selection.matches(m))
        .collect();
    messages.sort_by_key(|m| (message_time(m), m.id));

    // Damaged messages are left out, so the manifest written first names only what follows.
    let damaged: Vec<(Digest, String)> = messages
        .par_iter()
        .filter_map(|m| {
            let location = archive.location(&m.id)?;
            let pack = archive.pack_path(&location.pack);
            let fault = File::open(&pack)
                .map_err(|e| e.to_string())
                .and_then(|mut f| location.check(&m.id, &mut f).map_err(|e| e.to_string()));
            fault.err().map(|reason| (m.id, reason))
        })
        .collect();
    messages.retain(|m| !damaged.iter().any(|(id, _)| *id == m.id));
    // An empty export could not be checked with `sha256sum -c` (an empty SHA256SUMS fails).
    if messages.is_empty() {
        return Err(ExportError::Nothing {
            damaged: damaged.len(),
        });
    }

    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let zstd = name.ends_with(".zst") || name.ends_with(".tzst");
    let mut report = ExportReport {
        file: path.display().to_string(),
        skipped: damaged,
        ..ExportReport::default()
    };
    let written = write_tar(archive, &messages, &tmp, zstd, stop, &mut report, progress)
        .and_then(|()| durable::rename_durably(&tmp, path).map_err(write_err));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| report)
}

/// Writes the tar to `tmp` and syncs it; the zstd frame is finished explicitly, so that a
/// failure to write its end is an error, not a truncated export.
fn write_tar(
    archive: &Archive,
    messages: &[Message<'_>],
    tmp: &Path,
    zstd: bool,
    stop: &Stop,
    report: &mut ExportReport,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), ExportError> {
    let write_err = |source| ExportError::Write {
        path: tmp.to_path_buf(),
        source,
    };
    let file = durable::create_new(tmp)
        .or_else(|_| {
            let _ = std::fs::remove_file(tmp);
            durable::create_new(tmp)
        })
        .map_err(write_err)?;
    let out = if zstd {
        Output::Zstd(zstd::stream::write::Encoder::new(BufWriter::new(file), 3).map_err(write_err)?)
    } else {
        Output::Plain(BufWriter::new(file))
    };
    let mut tar = tar::Builder::new(out);

    let mut manifest = Vec::new();
    let mut sums = String::new();
    for m in messages {
        let line = ManifestLine {
            message: m,
            sha256: m.id,
            file: member_name(&m.id),
        };
        serde_json::to_writer(&mut manifest, &line).expect("manifest lines serialize");
        manifest.push(b'\n');
        sums.push_str(&format!("{}  {}\n", m.id, member_name(&m.id)));
    }
    let newest = messages
        .last()
        .map_or(0, |m| message_time(m).timestamp().max(0) as u64);
    append(&mut tar, "MANIFEST.jsonl", newest, &manifest).map_err(write_err)?;
    append(&mut tar, "SHA256SUMS", newest, sums.as_bytes()).map_err(write_err)?;
    for m in messages {
        if stop.requested() {
            return Err(ExportError::Stopped);
        }
        let raw = archive.read_message(&m.id)?;
        append(
            &mut tar,
            &member_name(&m.id),
            message_time(m).timestamp().max(0) as u64,
            &raw,
        )
        .map_err(write_err)?;
        report.messages += 1;
        report.bytes += raw.len() as u64;
        progress(raw.len() as u64);
    }
    let file = tar
        .into_inner()
        .and_then(Output::finish)
        .map_err(write_err)?;
    durable::sync_file(&file, tmp).map_err(write_err)
}

/// Where the tar goes: the file, through zstd or not.
enum Output {
    Plain(BufWriter<File>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl Output {
    fn finish(self) -> io::Result<File> {
        let buffered = match self {
            Output::Plain(w) => w,
            Output::Zstd(encoder) => encoder.finish()?,
        };
        buffered.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Plain(w) => w.write(buf),
            Output::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Plain(w) => w.flush(),
            Output::Zstd(w) => w.flush(),
        }
    }
}

fn append(tar: &mut tar::Builder<Output>, name: &str, mtime: u64, bytes: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append(&header, bytes)
}
