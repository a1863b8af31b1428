//! `export`: a portable, self-verifying tar (optionally zstd-compressed) of selected messages.
//!
//! Layout, in this order: `MANIFEST.jsonl` (one line per message: its catalog record, `sha256`
//! and `file`), `SHA256SUMS` (for `sha256sum -c`), then `messages/<sha256>.eml`. Everything in it
//! is a function of the archive's content, so the same archive and selection give the same bytes:
//! members are sorted by message time then id, and carry mode 0644, owner 0, and the message's
//! time as mtime.
//!
//! Memory does not grow with the selection: a first pass over the local index checks every
//! selected message and writes the manifest, the sums and the order of the members to unnamed
//! scratch files (gone with the process, even after a kill -9); the second writes the tar from
//! them, reading each message where the index says it is.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::archive::local_index::{IndexError, IndexedMessage, Query};
use crate::archive::select::{Selection, message_time};
use crate::archive::{ArchiveError, Digest, LocalIndex, Message, PackReader, durable};
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
    #[error("cannot write a scratch file in {path}")]
    Scratch { path: PathBuf, source: io::Error },
    #[error(
        "message {id} left the local index while it was exported (a repair or a rebuild of the index ran meanwhile): export again"
    )]
    Vanished { id: Digest },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Not transparent: the CLI finds the index error in the chain, to discard a damaged index.
    #[error("{0}")]
    Index(#[from] IndexError),
}

/// What an export takes: the messages of the local index that `query` narrows to and
/// `selection` keeps, read from `packs`.
pub struct Selected<'a> {
    pub index: &'a LocalIndex,
    pub query: &'a Query,
    pub selection: &'a Selection,
    pub packs: &'a PackReader,
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
    from: &Selected<'_>,
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
    let scratch = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let plan = plan(from, scratch, stop)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut report = ExportReport {
        file: path.display().to_string(),
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
                from,
                plan,
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
    from: &Selected<'_>,
    out: W,
    compression: Compression,
    scratch: &Path,
    stop: &Stop,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ExportReport, ExportError> {
    let plan = plan(from, scratch, stop)?;
    let mut report = ExportReport {
        file: "-".to_string(),
        ..ExportReport::default()
    };
    let mut out = write_tar(from, plan, out, compression, stop, &mut report, progress)
        .map_err(|e| e.at(Path::new("standard output")))?;
    out.flush()
        .map_err(|e| TarError::Write(e).at(Path::new("standard output")))?;
    Ok(report)
}

/// Damaged messages, with why each is.
type Damaged = Vec<(Digest, String)>;

/// The first pass: what the tar will hold, in scratch files.
struct Plan {
    manifest: File,
    sums: File,
    /// A record per member, in tar order: its id and mtime ([`ORDER_RECORD`] bytes).
    order: File,
    /// Damaged messages, left out of everything above.
    damaged: Damaged,
    /// The mtime of the manifest and the sums: the newest member's.
    newest: u64,
}

/// An id (32 bytes) and an mtime (8, little-endian).
const ORDER_RECORD: usize = 40;

/// Messages checked at once (on all cores) in the first pass.
const PLAN_CHUNK: usize = 1_000;

/// Checks every selected message (in export order) and writes the manifest, the sums and the
/// order of what is not damaged, to scratch files in `scratch`. Damaged messages are found
/// first, so that the manifest written first names only what follows.
fn plan(from: &Selected<'_>, scratch: &Path, stop: &Stop) -> Result<Plan, ExportError> {
    let scratch_err = |source| ExportError::Scratch {
        path: scratch.to_path_buf(),
        source,
    };
    let scratch_file = || tempfile::tempfile_in(scratch).map_err(scratch_err);
    let mut manifest = BufWriter::new(scratch_file()?);
    let mut sums = BufWriter::new(scratch_file()?);
    let mut order = BufWriter::new(scratch_file()?);
    let mut damaged: Damaged = Vec::new();
    let mut newest = 0;
    let mut members = 0;
    let mut chunk: Vec<IndexedMessage> = Vec::with_capacity(PLAN_CHUNK);
    let mut failed: Option<ExportError> = None;
    let mut write_chunk = |chunk: &mut Vec<IndexedMessage>| -> io::Result<()> {
        let faults: Vec<Option<String>> = chunk
            .par_iter()
            .map(|found| {
                from.packs
                    .check(&found.id, &found.location)
                    .err()
                    .map(|fault| fault.to_string())
            })
            .collect();
        for (found, fault) in chunk.iter().zip(faults) {
            if let Some(reason) = fault {
                damaged.push((found.id, reason));
                continue;
            }
            let m = found.message();
            let line = ManifestLine {
                message: &m,
                sha256: m.id,
                file: member_name(&m.id),
            };
            serde_json::to_writer(&mut manifest, &line).map_err(io::Error::other)?;
            manifest.write_all(b"\n")?;
            writeln!(sums, "{}  {}", m.id, member_name(&m.id))?;
            let mtime = message_time(&m).timestamp().max(0) as u64;
            order.write_all(&m.id.0)?;
            order.write_all(&mtime.to_le_bytes())?;
            newest = mtime;
            members += 1;
        }
        chunk.clear();
        Ok(())
    };
    from.index.for_each(from.query, &mut |found| {
        if stop.requested() {
            failed = Some(ExportError::Stopped);
            return Ok(false);
        }
        if !from.selection.matches(&found.message()) {
            return Ok(true);
        }
        chunk.push(found);
        if chunk.len() == PLAN_CHUNK
            && let Err(e) = write_chunk(&mut chunk)
        {
            failed = Some(scratch_err(e));
            return Ok(false);
        }
        Ok(true)
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    write_chunk(&mut chunk).map_err(scratch_err)?;
    // An empty export could not be checked with `sha256sum -c` (an empty SHA256SUMS fails).
    if members == 0 {
        return Err(ExportError::Nothing {
            damaged: damaged.len(),
        });
    }
    let rewound = |file: BufWriter<File>| -> io::Result<File> {
        let mut file = file.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        Ok(file)
    };
    Ok(Plan {
        manifest: rewound(manifest).map_err(scratch_err)?,
        sums: rewound(sums).map_err(scratch_err)?,
        order: rewound(order).map_err(scratch_err)?,
        damaged,
        newest,
    })
}

/// Why writing the tar failed, before it is known where it was going.
enum TarError {
    Write(io::Error),
    Stopped,
    Archive(ArchiveError),
    Index(IndexError),
    Vanished(Digest),
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
            TarError::Index(e) => ExportError::Index(e),
            TarError::Vanished(id) => ExportError::Vanished { id },
        }
    }
}

/// Writes the tar to `out` and gives it back; the zstd frame is finished explicitly, so that a
/// failure to write its end is an error, not a truncated export.
fn write_tar<W: Write>(
    from: &Selected<'_>,
    plan: Plan,
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
    report.skipped = plan.damaged;
    for (name, file) in [("MANIFEST.jsonl", plan.manifest), ("SHA256SUMS", plan.sums)] {
        let len = file.metadata().map_err(TarError::Write)?.len();
        append(&mut tar, name, plan.newest, len, BufReader::new(file)).map_err(TarError::Write)?;
    }
    let mut order = BufReader::new(plan.order);
    let mut record = [0u8; ORDER_RECORD];
    loop {
        match order.read_exact(&mut record) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(TarError::Write(e)),
        }
        if stop.requested() {
            return Err(TarError::Stopped);
        }
        let (id, mtime) = record.split_at(32);
        let id = Digest(id.try_into().expect("32 bytes"));
        let mtime = u64::from_le_bytes(mtime.try_into().expect("8 bytes"));
        let location = from
            .index
            .location(&id)
            .map_err(TarError::Index)?
            .ok_or(TarError::Vanished(id))?;
        let raw = from.packs.read(&id, &location).map_err(TarError::Archive)?;
        append(
            &mut tar,
            &member_name(&id),
            mtime,
            raw.len() as u64,
            raw.as_slice(),
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
    len: u64,
    bytes: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(len);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append(&header, bytes)
}
