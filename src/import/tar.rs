//! Import of a `popvault export` tar (plain or zstd): every message with the metadata the
//! exporting archive had. The tar is read as untrusted input: only the three kinds of file an
//! export has are accepted (and directories, which GNU tar adds when it packs an extracted
//! export again, with `./` before every name), never a link, device, absolute path or `..`, and
//! every member's size is bounded; nothing from it is ever written to disk except into the
//! archive. A message whose bytes do not hash to its name is damaged: it is left out and named,
//! and the rest is imported.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{ImportError, Ingest, MailSource};
use crate::archive::{Digest, Incoming, Source, Writer};

/// The largest message member accepted.
const MAX_MESSAGE: u64 = 1 << 30;
/// The largest MANIFEST.jsonl or SHA256SUMS accepted.
const MAX_INDEX: u64 = 1 << 30;

#[derive(Deserialize)]
struct ManifestLine {
    id: Digest,
    first_seen: DateTime<Utc>,
    sources: Vec<Source>,
    #[serde(default)]
    flags: Option<String>,
}

fn hostile(path: &Path, what: &str) -> ImportError {
    ImportError::HostileTar {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

/// The tar as read from its start: plain or zstd-compressed (by its magic number); other
/// compressions are named and refused.
fn open<'f>(file: &'f File, path: &Path) -> Result<tar::Archive<Box<dyn Read + 'f>>, ImportError> {
    let read_err = |source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = BufReader::new(file);
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let mut magic = [0u8; 6];
    let mut n = 0;
    while n < magic.len() {
        match file.read(&mut magic[n..]).map_err(read_err)? {
            0 => break,
            got => n += got,
        }
    }
    let compressed = match &magic[..n] {
        [0x1f, 0x8b, ..] => Some("gzip"),
        [b'B', b'Z', b'h', ..] => Some("bzip2"),
        [0xfd, b'7', b'z', b'X', b'Z', 0] => Some("xz"),
        _ => None,
    };
    if let Some(kind) = compressed {
        return Err(ImportError::Compressed {
            path: path.to_path_buf(),
            kind,
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let input: Box<dyn Read> = if magic.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(read_err)?)
    } else {
        Box::new(file)
    };
    Ok(tar::Archive::new(input))
}

/// An error reading the tar stream: the system's (a read error), or the bytes' own (a bad header
/// checksum, a field that is not a number, a member cut off, broken zstd), which says the file
/// is not a tar or a damaged one. The tar crate's words for the latter quote the file's bytes,
/// so they are not shown.
fn stream_err(path: &Path) -> impl Fn(io::Error) -> ImportError + '_ {
    move |source| {
        if source.raw_os_error().is_some() {
            ImportError::Read {
                path: path.to_path_buf(),
                source,
            }
        } else {
            ImportError::NotTar {
                path: path.to_path_buf(),
            }
        }
    }
}

/// The export as a file read twice: the file itself, or, for standard input, a FIFO or
/// `/dev/stdin`, a copy spooled into the archive's `tmp/` (removed when it is closed, and by
/// the next writer if this one is killed).
fn open_seekable(writer: &Writer, path: &Path) -> Result<File, ImportError> {
    // Opened once: a FIFO opened a second time would wait for a second writer for ever, and
    // the first one's bytes would be lost.
    let mut input: Box<dyn Read> = if super::is_stdin(path) {
        Box::new(io::stdin())
    } else {
        let file = File::open(path).map_err(super::read_err(path))?;
        if file.metadata().map_err(super::read_err(path))?.is_file() {
            return Ok(file);
        }
        Box::new(file)
    };
    let spool_err = |source| ImportError::Spool {
        path: super::shown(path).to_path_buf(),
        source,
    };
    let mut spool = tempfile::tempfile_in(writer.scratch_dir()).map_err(spool_err)?;
    io::copy(&mut input, &mut spool).map_err(spool_err)?;
    Ok(spool)
}

/// What a member of an export is, by its name.
enum Member {
    Manifest,
    Sums,
    Message(Digest),
    /// A directory (`messages/`, `./`): nothing to read.
    Directory,
}

/// A member type in words, for the refusal of anything but files and directories.
fn entry_kind(kind: tar::EntryType) -> &'static str {
    use tar::EntryType::*;
    match kind {
        Symlink => "a symbolic link",
        Link => "a hard link",
        Char => "a character device",
        Block => "a block device",
        Fifo => "a FIFO",
        GNULongName | GNULongLink | XHeader | XGlobalHeader => "an extension header out of place",
        GNUSparse => "a sparse file",
        _ => "of an unknown type",
    }
}

/// Judges a member by its header alone: a directory, or a regular file with a relative path
/// and no `..`, one of the names an export has, of a bounded size. Returns what it is, its name
/// and the most bytes it may hold.
fn check_member<R: Read>(
    path: &Path,
    entry: &tar::Entry<'_, R>,
) -> Result<(Member, String, u64), ImportError> {
    let read_err = stream_err(path);
    let header = entry.header();
    let member = entry.path().map_err(&read_err)?.into_owned();
    let shown = member.display().to_string();
    if member
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(hostile(
            path,
            &format!("member {shown:?} has an absolute path or '..'"),
        ));
    }
    if header.entry_type() == tar::EntryType::Directory {
        return Ok((Member::Directory, shown, 0));
    }
    if !matches!(
        header.entry_type(),
        tar::EntryType::Regular | tar::EntryType::Continuous
    ) {
        return Err(hostile(
            path,
            &format!(
                "member {shown:?} is {}, not a file (links and devices are refused)",
                entry_kind(header.entry_type())
            ),
        ));
    }
    // `./MANIFEST.jsonl`, as `tar -C dir .` writes it, is `MANIFEST.jsonl`.
    let name: std::path::PathBuf = member
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let name = name.to_string_lossy().into_owned();
    let limit = if name.starts_with("messages/") {
        MAX_MESSAGE
    } else {
        MAX_INDEX
    };
    let size = header.size().map_err(&read_err)?;
    if size > limit {
        return Err(hostile(
            path,
            &format!("member {shown:?} claims {size} bytes, more than {limit}"),
        ));
    }
    let message = name
        .strip_prefix("messages/")
        .and_then(|n| n.strip_suffix(".eml"))
        .and_then(|hex| hex.parse::<Digest>().ok());
    let kind = match (name.as_str(), message) {
        ("MANIFEST.jsonl", _) => Member::Manifest,
        ("SHA256SUMS", _) => Member::Sums,
        (_, Some(id)) => Member::Message(id),
        (_, None) => {
            return Err(hostile(
                path,
                &format!("unexpected member {shown:?}: not a popvault export"),
            ));
        }
    };
    Ok((kind, shown, limit))
}

/// Imports an export in two passes. The first checks every member header, so that a hostile
/// tar is refused before anything from it is added, and reads MANIFEST.jsonl (popvault writes
/// it first, a re-packing tar may not). The second reads the messages, each checked against its
/// name (SHA-256) and found in the manifest.
/// A `popvault export` tar, plain or .tar.zst, with its metadata.
pub(super) struct Export {
    pub path: PathBuf,
}

impl MailSource for Export {
    fn read_into(&mut self, ingest: &mut Ingest<'_, '_>) -> Result<(), ImportError> {
        import_tar(ingest, &self.path)
    }
}

fn import_tar(ingest: &mut Ingest<'_, '_>, path: &Path) -> Result<(), ImportError> {
    let file = open_seekable(ingest.writer(), path)?;
    let path = super::shown(path);
    let read_err = stream_err(path);
    let mut manifest: Option<HashMap<Digest, ManifestLine>> = None;
    for entry in open(&file, path)?.entries().map_err(&read_err)? {
        let mut entry = entry.map_err(&read_err)?;
        let (kind, shown, limit) = check_member(path, &entry)?;
        if let Member::Manifest = kind {
            let bytes = read_member(path, &mut entry, &shown, limit)?;
            manifest = Some(parse_manifest(path, &bytes)?);
        }
    }
    let Some(manifest) = manifest else {
        return Err(hostile(path, "no MANIFEST.jsonl: not a popvault export"));
    };

    // Pass two makes the same checks (the file could have changed in between).
    for entry in open(&file, path)?.entries().map_err(&read_err)? {
        let mut entry = entry.map_err(&read_err)?;
        let (kind, shown, limit) = check_member(path, &entry)?;
        let Member::Message(id) = kind else {
            continue;
        };
        let bytes = read_member(path, &mut entry, &shown, limit)?;
        if Digest::of(&bytes) != id {
            // Damaged in the export: left out, named; the rest goes in (as restore and export
            // skip a damaged message).
            ingest.report.damaged.push(shown);
            continue;
        }
        let record = manifest
            .get(&id)
            .ok_or_else(|| ImportError::TarInconsistent {
                path: path.to_path_buf(),
                what: format!("member {shown:?} is not in MANIFEST.jsonl"),
            })?;
        for source in &record.sources {
            ingest.push(Incoming {
                raw: bytes.clone(),
                source: source.clone(),
                flags: record.flags.clone(),
                first_seen: record.first_seen,
            })?;
        }
    }
    Ok(())
}

/// A member's bytes, at most `limit` of them.
fn read_member<R: Read>(
    path: &Path,
    entry: &mut tar::Entry<'_, R>,
    shown: &str,
    limit: u64,
) -> Result<Vec<u8>, ImportError> {
    let size = entry.header().size().unwrap_or(0);
    let mut bytes = Vec::with_capacity(size.min(64 << 20) as usize);
    entry
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(stream_err(path))?;
    if bytes.len() as u64 > limit {
        return Err(hostile(
            path,
            &format!("member {shown:?} is larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<HashMap<Digest, ManifestLine>, ImportError> {
    let mut manifest = HashMap::new();
    for (n, line) in bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
    {
        let record: ManifestLine = serde_json::from_slice(line).map_err(|e| {
            hostile(
                path,
                &format!(
                    "MANIFEST.jsonl line {} is not a manifest record: {e}",
                    n + 1
                ),
            )
        })?;
        manifest.insert(record.id, record);
    }
    Ok(manifest)
}
