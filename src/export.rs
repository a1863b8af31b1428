//! `export`: a portable, self-verifying tar (optionally zstd-compressed) of selected messages.
//!
//! Layout, in this order: `MANIFEST.jsonl` (one line per message: its catalog record, `sha256`
//! and `file`), `SHA256SUMS` (for `sha256sum -c`), then `messages/<sha256>.eml`. Everything in it
//! is a function of the archive's content, so the same archive and selection give the same bytes:
//! members are sorted by message time then id, and carry mode 0644, owner 0, and the message's
//! time as mtime.

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
        if *damaged > 0 { format!(" but {damaged} damaged ones") } else { String::new() }
    )]
    Nothing { damaged: usize },
    #[error("{path} is a directory: give the export a file name (e.g. {path}/mail.tar.zst)")]
    IsDirectory { path: PathBuf },
    #[error("{path}: popvault writes a plain tar or a zstd one, not {kind}")]
    UnsupportedCompression { path: PathBuf, kind: &'static str },
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
    /// Damaged messages left out, with why.
    pub skipped: Damaged,
}

/// How the tar is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
}

impl Compression {
    /// The compression a file name asks for, its ending compared without case: `.zst`, `.zstd`
    /// and `.tzst` are zstd; the endings of other compressors are refused rather than given a plain
    /// tar their name would lie about; anything else is a plain tar.
    pub fn for_path(path: &Path) -> Result<Compression, ExportError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let refused = [
            (".gz", "gzip"),
            (".tgz", "gzip"),
            (".bz2", "bzip2"),
            (".tbz", "bzip2"),
            (".tbz2", "bzip2"),
            (".xz", "xz"),
            (".txz", "xz"),
            (".lz", "lzip"),
            (".lzma", "lzma"),
            (".lz4", "lz4"),
            (".z", "compress"),
            (".zip", "zip"),
            (".7z", "7-Zip"),
        ];
        if let Some((_, kind)) = refused.iter().find(|(end, _)| name.ends_with(end)) {
            return Err(ExportError::UnsupportedCompression {
                path: path.to_path_buf(),
                kind,
            });
        }
        Ok(
            if name.ends_with(".zst") || name.ends_with(".zstd") || name.ends_with(".tzst") {
                Compression::Zstd
            } else {
                Compression::None
            },
        )
    }
}

pub fn member_name(id: &Digest) -> String {
    format!("messages/{id}.eml")
}

/// Writes the export to `path` (through a temp file renamed at the end: never half a file),
/// compressed as its name asks ([`Compression::for_path`]). A stop request ends it between two
/// messages with [`ExportError::Stopped`], leaving no file.
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
    let compression = Compression::for_path(path)?;
    let (messages, damaged) = select(archive, selection)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut report = ExportReport {
        file: path.display().to_string(),
        skipped: damaged,
        ..ExportReport::default()
    };
    let tmp_err = |source| ExportError::Write {
        path: tmp.clone(),
        source,
    };
    let written = durable::create_new(&tmp)
        .or_else(|_| {
            let _ = std::fs::remove_file(&tmp);
            durable::create_new(&tmp)
        })
        .map_err(tmp_err)
        .and_then(|file| {
            let file = write_tar(
                archive,
                &messages,
                BufWriter::new(file),
                compression,
                stop,
                &mut report,
                progress,
            )
            .map_err(|e| e.at(&tmp))?;
            let file = file.into_inner().map_err(|e| tmp_err(e.into_error()))?;
            durable::sync_file(&file, &tmp).map_err(tmp_err)
        })
        .and_then(|()| durable::rename_durably(&tmp, path).map_err(write_err));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| report)
}

/// Writes the export to `out` (standard output: `export -`). A failure or a stop leaves a
/// partial tar there, which `tar` and `import tar:` see as truncated.
pub fn export_to<W: Write>(
    archive: &Archive,
    selection: &Selection,
    out: W,
    compression: Compression,
    stop: &Stop,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ExportReport, ExportError> {
    let (messages, damaged) = select(archive, selection)?;
    let mut report = ExportReport {
        file: "-".to_string(),
        skipped: damaged,
        ..ExportReport::default()
    };
    let mut out = write_tar(
        archive,
        &messages,
        out,
        compression,
        stop,
        &mut report,
        progress,
    )
    .map_err(|e| e.at(Path::new("standard output")))?;
    out.flush()
        .map_err(|e| TarError::Write(e).at(Path::new("standard output")))?;
    Ok(report)
}

/// Damaged messages, with why each is.
type Damaged = Vec<(Digest, String)>;

/// The messages to export, sorted, and the damaged ones left out. Damaged messages are found
/// first, so that the manifest written first names only what follows.
fn select<'a>(
    archive: &'a Archive,
    selection: &Selection,
) -> Result<(Vec<Message<'a>>, Damaged), ExportError> {
    let mut messages: Vec<Message<'_>> = archive
        .messages()
        .into_iter()
        .filter(|m| selection.matches(m))
        .collect();
    messages.sort_by_key(|m| (message_time(m), m.id));
    let damaged: Damaged = messages
        .par_iter()
        .filter_map(|m| {
            let location = archive.location(&m.id)?;
            let fault = crate::archive::crypto::PackFile::open(archive.root(), &location.pack)
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
    Ok((messages, damaged))
}

/// Why writing the tar failed, before it is known where it was going.
enum TarError {
    Write(io::Error),
    Stopped,
    Archive(ArchiveError),
}

impl TarError {
    fn at(self, path: &Path) -> ExportError {
        match self {
            TarError::Write(source) => ExportError::Write {
                path: path.to_path_buf(),
                source,
            },
            TarError::Stopped => ExportError::Stopped,
            TarError::Archive(e) => ExportError::Archive(e),
        }
    }
}

/// Writes the tar to `out` and gives it back; the zstd frame is finished explicitly, so that a
/// failure to write its end is an error, not a truncated export.
fn write_tar<W: Write>(
    archive: &Archive,
    messages: &[Message<'_>],
    out: W,
    compression: Compression,
    stop: &Stop,
    report: &mut ExportReport,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<W, TarError> {
    let out = match compression {
        Compression::Zstd => {
            Output::Zstd(zstd::stream::write::Encoder::new(out, 3).map_err(TarError::Write)?)
        }
        Compression::None => Output::Plain(out),
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
    append(&mut tar, "MANIFEST.jsonl", newest, &manifest).map_err(TarError::Write)?;
    append(&mut tar, "SHA256SUMS", newest, sums.as_bytes()).map_err(TarError::Write)?;
    for m in messages {
        if stop.requested() {
            return Err(TarError::Stopped);
        }
        let raw = archive.read_message(&m.id).map_err(TarError::Archive)?;
        append(
            &mut tar,
            &member_name(&m.id),
            message_time(m).timestamp().max(0) as u64,
            &raw,
        )
        .map_err(TarError::Write)?;
        report.messages += 1;
        report.bytes += raw.len() as u64;
        progress(raw.len() as u64);
    }
    tar.into_inner()
        .and_then(Output::finish)
        .map_err(TarError::Write)
}

/// Where the tar goes: straight out, or through zstd.
enum Output<W: Write> {
    Plain(W),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Output<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Output::Plain(w) => Ok(w),
            Output::Zstd(encoder) => encoder.finish(),
        }
    }
}

impl<W: Write> Write for Output<W> {
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

fn append<W: Write>(
    tar: &mut tar::Builder<Output<W>>,
    name: &str,
    mtime: u64,
    bytes: &[u8],
) -> io::Result<()> {
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
